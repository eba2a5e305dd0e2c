"""Building the package's C sources on first use (oss_convert.cbuild): cached by sources, headers
and flags; a build that fails says why (the compiler's last lines) once, is not tried again by
later processes, and leaves the numpy path running."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oss_convert import cbuild
from oss_convert.formats import compiled
from oss_convert.runtime.kernels import native

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def failing_cc(tmp_path) -> tuple[Path, Path]:
    """(a C compiler that fails every build with an error of its own, the log of its builds)."""
    log = tmp_path / "builds.log"
    cc = tmp_path / "broken-cc"
    cc.write_text("#!/bin/sh\n"
                  "case \"$*\" in *--version*) echo 'broken-cc 1.0'; exit 0;; esac\n"
                  f"echo build >> {log}\n"
                  "echo 'probe.c:1:1: warning: something earlier' >&2\n"
                  "echo 'probe.c:7:3: error: the assembler rejected vpdpbusd' >&2\n"
                  "exit 1\n")
    cc.chmod(0o755)
    return cc, log


def test_a_failed_build_says_why_and_is_not_tried_again(monkeypatch, tmp_path, failing_cc, capsys):
    cc, log = failing_cc
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = cbuild.build(native.SOURCES, openmp=True)
    assert first.path is None
    assert "broken-cc exited with status 1" in first.failure and "the assembler rejected vpdpbusd" in first.failure
    assert log.read_text().count("build") == 2  # with -fopenmp, then without
    again = cbuild.build(native.SOURCES, openmp=True)  # as a later process finds it
    assert again.path is None and "the assembler rejected vpdpbusd" in again.failure and "remove" in again.failure
    assert log.read_text().count("build") == 2
    native.library.cache_clear()
    try:
        assert native.library() is None
    finally:
        native.library.cache_clear()
    err = capsys.readouterr().err
    assert err.count("note: the CPU kernels could not be built") == 1
    assert "the assembler rejected vpdpbusd" in err and "numpy and torch" in err


def test_with_a_failing_compiler_the_commands_run_on_numpy(tmp_path, failing_cc, bundled):
    """A user's machine whose compiler fails: convert says why once per library and writes the
    same file as the compiled searches do."""
    cc, log = failing_cc
    env = {**os.environ, "CC": str(cc), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    outs = []
    for name, extra in (("fallback", env), ("compiled", os.environ)):
        out = tmp_path / f"{name}.gguf"
        done = subprocess.run([sys.executable, "-m", "oss_convert.cli", "convert", bundled, "-o", out, "--type",
                               "iq4_xs"], capture_output=True, text=True, cwd=ROOT, env=extra, timeout=600)
        assert done.returncode == 0, done.stderr
        outs.append((out, done.stderr))
    (fallback, err), (compiled_out, compiled_err) = outs
    assert err.count("note: iq4_search.c could not be built: broken-cc exited with status 1") == 1
    assert "the assembler rejected vpdpbusd" in err and "note:" not in compiled_err
    assert fallback.read_bytes() == compiled_out.read_bytes()


def test_no_compiler_means_no_library_and_one_note(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.build() is None
    native.library.cache_clear()
    try:
        assert native.library() is None
        err = capsys.readouterr().err
        assert err.count("note: the CPU kernels could not be built") == 1 and "does not run" in err
    finally:
        native.library.cache_clear()


@pytest.mark.slow
def test_an_unwritable_cache_or_a_broken_library_is_no_traceback(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # a file where the cache folder would be
    made = cbuild.build(native.SOURCES, openmp=True)
    assert made.path is None and "cannot be written" in made.failure
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built = native.build()
    built.write_bytes(b"not a library")
    native.library.cache_clear()
    try:
        assert native.library() is not None  # rebuilt
    finally:
        native.library.cache_clear()


def test_a_changed_header_is_a_new_build(monkeypatch, tmp_path):
    """The cache key covers the headers a source includes (formats/half.h is shared)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "value.h").write_text("static int value(void) { return 1; }\n")
    source = tmp_path / "probe.c"
    source.write_text('#include "value.h"\nint probe(void) { return value(); }\n')
    first = cbuild.compiled(source)
    if first is None:
        pytest.skip("no C compiler")
    assert cbuild.compiled(source) == first
    (tmp_path / "value.h").write_text("static int value(void) { return 2; }\n")
    second = cbuild.compiled(source)
    assert second != first and ctypes.CDLL(str(second)).probe() == 2


def test_the_formats_searches_report_their_own_failure(monkeypatch, tmp_path, failing_cc, capsys):
    cc, _ = failing_cc
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    compiled.library.cache_clear()
    try:
        assert compiled.library("kquant_search") is None
    finally:
        compiled.library.cache_clear()
    assert "note: kquant_search.c could not be built: broken-cc exited with status 1" in capsys.readouterr().err

"""The command line as a user meets it: options that do not apply are refused, every input is
opened before the first long step, and each command has one error path."""

from __future__ import annotations

import pytest

from tests.cli import run_cli


def assert_usage_error(result, *expected: str) -> None:
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.output
    for text in expected:
        assert text in last, last


@pytest.mark.parametrize("extra,flag", [(["--type", "q4_k_m"], "--type"), (["--dry-run"], "--dry-run"),
                                        (["--outtype", "f16"], "--outtype"), (["--threads", "2"], "--threads"),
                                        (["--keep-mxfp4-experts"], "--keep-mxfp4-experts")])
def test_convert_to_safetensors_refuses_the_gguf_options(tiny_gguf, tmp_path, extra, flag):
    out = tmp_path / "back"
    assert_usage_error(run_cli("convert", tiny_gguf, "-o", out, "--to", "safetensors", *extra, code=2),
                       flag, "applies to --to gguf only")
    assert not out.exists()


def test_convert_refuses_options_of_the_other_mode(bundled, tmp_path):
    out = tmp_path / "x.gguf"
    assert_usage_error(run_cli("convert", bundled, "-o", out, "--type", "q4_k_m", "--outtype", "f16", code=2),
                       "--outtype", "applies to the lossless --type mxfp4 only")
    assert_usage_error(run_cli("convert", bundled, "-o", out, "--keep-mxfp4-experts", code=2),
                       "--keep-mxfp4-experts", "applies only when requantizing")
    assert_usage_error(run_cli("convert", bundled, "-o", out, "--threads", "2", code=2), "--threads",
                       "applies only when requantizing")
    assert not out.exists()


def test_convert_takes_the_options_that_apply(bundled, tmp_path):
    run_cli("convert", bundled, "-o", tmp_path / "a.gguf", "--outtype", "f16")
    run_cli("convert", bundled, "-o", tmp_path / "b.gguf", "--type", "q8_0", "--threads", "1",
               "--keep-mxfp4-experts")
    run_cli("convert", bundled, "--type", "q4_k_m", "--dry-run")


def test_compare_refuses_options_of_the_other_mode(bundled, tiny_gguf):
    assert_usage_error(run_cli("compare", bundled, tiny_gguf, "--full", "--prompt", "hi", "--layers", "0", code=2),
                       "--layers", "not to --full")
    assert_usage_error(run_cli("compare", bundled, tiny_gguf, "--full", "--prompt", "hi", "--seed", "3", code=2),
                       "--seed", "not to --full")
    assert_usage_error(run_cli("compare", bundled, tiny_gguf, "--prompt", "hi", code=2), "--prompt", "with --full only")
    assert_usage_error(run_cli("compare", bundled, tiny_gguf, "--ctx", "64", code=2), "--ctx", "with --full only")
    assert_usage_error(run_cli("compare", bundled, tiny_gguf, "--ctx", "64", "--prompt", "x", code=2),
                       "--prompt, --ctx", "apply with --full only")


def test_q8_activations_are_refused_where_they_cannot_run(bundled, tiny_gguf):
    assert_usage_error(run_cli("compare", bundled, tiny_gguf, "--activations", "q8", code=2), "--activations",
                       "with --full only")
    assert_usage_error(run_cli("generate", bundled, "--prompt", "hi", "--activations", "q8", "--device", "cuda",
                               code=2), "--activations q8", "--device cpu")
    assert_usage_error(run_cli("compare", bundled, tiny_gguf, "--full", "--prompt", "hi", "--activations", "q8",
                           "--device", "cuda", code=2), "--activations q8")


def test_compare_opens_both_inputs_before_running_either(bundled, tmp_path, monkeypatch):
    """A missing B is said at once, not after A's forward pass."""
    pytest.importorskip("torch")
    from oss_convert.compare import full as full_compare

    def must_not_run(*args, **kwargs):
        raise AssertionError("a model ran before every input was opened")
    monkeypatch.setattr(full_compare, "model_logits", must_not_run)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1 2 3")
    result = run_cli("compare", bundled, tmp_path / "missing.gguf", "--full", "--tokens-file", tokens, code=1)
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'missing.gguf'}: no such file"]


def test_compare_checks_token_ids_against_both_vocabularies_first(bundled, tiny_gguf, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from oss_convert.compare import full as full_compare
    monkeypatch.setattr(full_compare, "model_logits", lambda *a, **k: pytest.fail("ran before the check"))
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1 2 100000")
    result = run_cli("compare", bundled, tiny_gguf, "--full", "--tokens-file", tokens, code=1)
    assert "token id 100000 is outside the vocabulary" in result.output


def test_verify_reports_unreadable_input_with_status_2_in_one_line(bundled, tmp_path):
    result = run_cli("verify", bundled, tmp_path / "nope.gguf", code=2)
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'nope.gguf'}: no such file"]


@pytest.mark.parametrize("command", ["inspect", "convert", "verify", "compare", "generate", "report"])
def test_every_command_has_help(command):
    assert "Usage:" in run_cli(command, "--help").output

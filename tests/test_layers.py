"""The package's layers look only down, and torch stays the runtime's.

Containers (files) and codecs (formats) at the bottom (with the C build helper, cbuild), the checkpoint model above them, the
plans and memory plans above that, the Hub above the checkpoint model, the commands (inspect, convert,
verify, runtime) above all of those, never importing each other, the report above the commands
(it puts their documents on one page), and the CLI on top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "oss_convert"

BASE = {"errors", "text", "metrics", "cbuild"}
BELOW = {
    "errors": set(), "text": set(), "metrics": set(), "cbuild": set(),
    "files": {"errors"},
    "formats": {"errors", "metrics", "cbuild"},
    "checkpoint": {"errors", "files", "formats"},
    "plan": BASE | {"files", "formats", "checkpoint"},
    "memory": BASE | {"files", "formats", "checkpoint", "plan"},
    "hub": BASE | {"files", "checkpoint"},
}
COMMANDS = {"inspect", "convert", "verify", "runtime"}
for command in COMMANDS:
    BELOW[command] = BASE | {"files", "formats", "checkpoint", "plan", "memory"}
BELOW["report"] = BELOW["verify"] | COMMANDS  # the port report puts the commands' documents together
BELOW["cli"] = set(BELOW) | COMMANDS
TORCH = {"torch", "triton"}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> list[tuple[str, int]]:
    return imports_in(path.read_text(), path.relative_to(PACKAGE).parts[:-1])


def imports_in(text: str, package_parts: tuple[str, ...]) -> list[tuple[str, int]]:
    """(the package part or third-party module imported, line) of every import in a module of
    the package folder `package_parts`, at any depth (a function-level import is as much a
    dependency as a top-level one)."""
    tree = ast.parse(text)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name.split(".")[0] if not alias.name.startswith("oss_convert.")
                     else alias.name.split(".")[1], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                out.append((module.split(".")[1] if module.startswith("oss_convert.") else module.split(".")[0],
                            node.lineno))
                continue
            base = list(package_parts[:len(package_parts) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                out.append((target[0], node.lineno))
            else:  # "from .. import x": each name is a part of the package
                out += [(alias.name, node.lineno) for alias in node.names]
    return out


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_part_has_a_layer():
    assert {part_of(p) for p in sources()} <= set(BELOW), "a new part of the package needs its place in BELOW"


def test_each_part_imports_only_the_layers_below_it():
    parts = set(BELOW)
    wrong = []
    for path in sources():
        part = part_of(path)
        for imported, line in imports(path):
            if imported in parts and imported != part and imported not in BELOW[part]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {part} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_command_imports_another():
    wrong = [f"{path.relative_to(ROOT)}:{line}: {part_of(path)} imports {imported}"
             for path in sources() if part_of(path) in COMMANDS
             for imported, line in imports(path) if imported in COMMANDS - {part_of(path)}]
    assert not wrong, "\n".join(wrong)


def test_the_parts_import_each_other_without_cycles():
    graph = {part: set() for part in BELOW}
    for path in sources():
        graph[part_of(path)] |= {i for i, _ in imports(path) if i in BELOW and i != part_of(path)}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for part in sorted(graph):
        if part not in state:
            visit(part, [])


def test_only_the_runtime_imports_torch():
    wrong = [f"{path.relative_to(ROOT)}:{line}: imports {imported}" for path in sources()
             if part_of(path) not in ("runtime", "cli") for imported, line in imports(path) if imported in TORCH]
    assert not wrong, "\n".join(wrong)


def test_the_import_reader_sees_relative_and_absolute_imports():
    text = ("from ..plan.layout import Target\nfrom . import lossless\nimport torch\nfrom oss_convert.hub import x\n"
            "def f():\n    from .. import text\n")
    assert [i for i, _ in imports_in(text, ("convert",))] == ["plan", "convert", "torch", "hub", "text"]


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "triton"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, BlockTorch())
    from oss_convert.cli import main
    sys.argv = ["oss-convert"] + sys.argv[1:]
    main()
""")


def run_without_torch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_inspect_convert_and_verify_run_without_torch(bundled, tmp_path):
    out = tmp_path / "tiny.gguf"
    steps = [["inspect", bundled, "--json"], ["convert", bundled, "-o", out],
             ["convert", bundled, "-o", tmp_path / "q4.gguf", "--type", "q4_k_m"],
             ["verify", bundled, out], ["convert", out, "-o", tmp_path / "back", "--to", "safetensors"]]
    for step in steps:
        result = run_without_torch(*step)
        assert result.returncode == 0, (step, result.stderr)


@pytest.mark.parametrize("command, status", [("compare", 1), ("report", 2)])
def test_the_runtimes_commands_without_torch_say_how_to_install_it(bundled, tmp_path, command, status):
    result = run_without_torch(command, bundled, bundled, *(["-o", tmp_path / "r.html"] if command == "report" else []))
    assert result.returncode == status
    assert result.stderr.strip().splitlines() == [
        f"Error: {command} runs the model on torch, which is not installed: pip install 'oss-convert[runtime]'"]

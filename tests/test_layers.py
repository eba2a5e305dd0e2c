"""The package's layers look only down, and torch stays the runtime's.

Containers (files) and codecs (formats) at the bottom (with the C build helper, cbuild), the
checkpoint model above them, the conversion plans and memory estimates above that, the apps'
stores above the containers and the Hub above the checkpoint model and the stores, the runtime (a
library: no command) above those, the commands (inspect, convert, verify, compare, generate,
models, check: only these two look into the stores, and models into the Hub) above all of them, never importing each
other, the report
above the commands (it puts their documents on one page), and the CLI on top. Inside the runtime,
kernels, weights, model and execution look only down too.
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

BASE = {"errors", "text", "metrics", "cbuild", "plotting", "user_cache"}
BELOW = {
    "errors": set(), "text": set(), "metrics": set(), "cbuild": {"user_cache"}, "plotting": set(),
    "user_cache": set(),
    "files": {"errors"},
    "formats": {"errors", "metrics", "cbuild"},
    "checkpoint": {"errors", "files", "formats"},
    "plan": BASE | {"files", "formats", "checkpoint"},
    "memory": BASE | {"files", "formats", "checkpoint", "plan"},
    "stores": BASE | {"files"},
    "hub": BASE | {"files", "checkpoint", "stores"},
    "runtime": BASE | {"files", "formats", "checkpoint", "plan", "memory"},
}
COMMANDS = {"inspect", "convert", "verify", "compare", "generate", "models", "check"}
RUNS_THE_MODEL = {"compare", "generate", "check"}
for command in COMMANDS:
    BELOW[command] = BASE | {"files", "formats", "checkpoint", "plan", "memory"}
    if command in RUNS_THE_MODEL:
        BELOW[command] |= {"runtime"}
BELOW["models"] |= {"stores", "hub"}  # it finds the models it surveys
BELOW["check"] |= {"stores"}  # it finds the file behind a server's model
BELOW["report"] = BELOW["compare"] | COMMANDS  # the port report puts the commands' documents together
BELOW["cli"] = set(BELOW) | COMMANDS
TORCH = {"torch", "triton"}
# the runtime's own layers, each importing only those before it
RUNTIME = ["kernels", "weights", "model", "execution"]


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> list[tuple[str, int]]:
    return [(target[0], line) for target, line in targets(path)]


def targets(path: Path) -> list[tuple[tuple[str, ...], int]]:
    return targets_in(path.read_text(), path.relative_to(PACKAGE).parts[:-1])


def imports_in(text: str, package_parts: tuple[str, ...]) -> list[tuple[str, int]]:
    return [(target[0], line) for target, line in targets_in(text, package_parts)]


def targets_in(text: str, package_parts: tuple[str, ...]) -> list[tuple[tuple[str, ...], int]]:
    """(the module imported as its path in the package, or a third-party module's name alone,
    line) of every import in a module of the package folder `package_parts`, at any depth (a
    function-level import is as much a dependency as a top-level one)."""
    tree = ast.parse(text)
    out: list[tuple[tuple[str, ...], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(tuple(alias.name.split(".")[1:]) if alias.name.startswith("oss_convert.")
                     else (alias.name.split(".")[0],), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                out.append((tuple(module.split(".")[1:]) if module.startswith("oss_convert.")
                            else (module.split(".")[0],), node.lineno))
                continue
            base = list(package_parts[:len(package_parts) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                out.append((tuple(target), node.lineno))
            else:  # "from .. import x": each name is a part of the package
                out += [((alias.name,), node.lineno) for alias in node.names]
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


def test_only_the_runtime_and_the_commands_that_run_it_import_torch():
    wrong = [f"{path.relative_to(ROOT)}:{line}: imports {imported}" for path in sources()
             if part_of(path) not in {"runtime", "cli"} | RUNS_THE_MODEL for imported, line in imports(path)
             if imported in TORCH]
    assert not wrong, "\n".join(wrong)


def runtime_layer(parts: tuple[str, ...]) -> str | None:
    """The runtime layer a module path (in the package) belongs to, if it is the runtime's."""
    return parts[1] if len(parts) > 1 and parts[0] == "runtime" and parts[1] in RUNTIME else None


def test_the_runtimes_layers_look_only_down():
    modules = [p for p in sources() if part_of(p) == "runtime" and p.parent != PACKAGE / "runtime"]
    assert {runtime_layer(p.relative_to(PACKAGE).parts) for p in modules} == set(RUNTIME)
    wrong = []
    for path in modules:
        layer = runtime_layer(path.relative_to(PACKAGE).parts)
        for target, line in targets(path):
            imported = runtime_layer(target)
            if imported is not None and RUNTIME.index(imported) > RUNTIME.index(layer):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: runtime.{layer} imports runtime.{imported}")
    assert not wrong, "\n".join(wrong)


def test_the_runtime_holds_no_command_and_reads_no_file():
    """Commands live in their own packages; files are read by the checkpoint model, which the
    runtime's weight source asks for tensors."""
    for path in (PACKAGE / "runtime").rglob("*.py"):
        text = path.read_text()
        for needle in ("open(", "read_text(", "read_bytes(", "tokenizers", "jinja2", "click", "tqdm"):
            assert needle not in text, f"{path.relative_to(ROOT)}: {needle}"


def test_the_import_reader_sees_relative_and_absolute_imports():
    text = ("from ..plan.layout import Target\nfrom . import lossless\nimport torch\nfrom oss_convert.hub import x\n"
            "def f():\n    from .. import text\n")
    assert [i for i, _ in imports_in(text, ("convert",))] == ["plan", "convert", "torch", "hub", "text"]
    assert [t for t, _ in targets_in("from ..weights.source import WeightSource\n", ("runtime", "model"))] == [
        ("runtime", "weights", "source")]


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

"""The shape of the code: imports flow one way through the layers of DESIGN.md, there is
no import cycle, no function runs past 60 lines, and the pure policy modules import no
torch. Read from the source with `ast`, so a lazy import inside a function counts too."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "coserve"

# Lowest first. A unit (a top-level module or package of coserve) may import units of its
# own layer or below, never above. The loader (storage I/O and the safetensors format)
# sits below the repository, which validates weight files with its header parser.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer.split()) for layer in (
    "coserve _lazy errors types",  # the package root only exports lazily
    "stats plan planfile trace architectures loader report",
    "repository",
    "scheduler manager executors",
    "policies config",
    "assembly tracker",
    "engine simulator",
    "profiler planner cluster",
    "bench inspect server zoo cli",
))
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """coserve modules `tree` imports (a name imported from a package counts as its
    submodule when there is one)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "coserve":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "coserve")
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"coserve.{unit} is in no layer: add it to LAYERS in {__file__}")


def test_imports_flow_down_the_layers():
    modules = _modules()
    upward = sorted(
        f"{m} imports {dep}"
        for m, tree in modules.items()
        for dep in _imports(tree, set(modules))
        if _layer(_unit(dep)) > _layer(_unit(m))
    )
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(tree, set(modules)) - {m} for m, tree in modules.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_function_runs_past_the_limit():
    long = sorted(
        f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for m, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    )
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_policy_modules_do_not_import_torch():
    """In a fresh interpreter: in the test run torch is already imported by other tests."""
    pure = ["coserve.policies", "coserve.config", "coserve.assembly", "coserve.tracker",
            "coserve.scheduler", "coserve.manager.residency", "coserve.manager.eviction",
            "coserve.plan", "coserve.planfile", "coserve.types", "coserve.stats"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in pure)
            + "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"one of {pure} imports torch"

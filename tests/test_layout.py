"""The house rules (docs/layout.md), held by an AST scan of every import in repro/, function-level ones included:
no import circles; the plotting package never imports torch or the training package; nothing imports the
benchmarks or a command; docs/layout.md names every module."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "repro"
COMMANDS = {"repro.demo", "repro.diagnose", "repro.evaluate", "repro.export_tb", "repro.fetch", "repro.train.__main__", "repro.plots.__main__",
            "repro.bench.__main__", "repro.bench.gpu", "repro.bench.loader"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "_plugins" not in p.parts}


def imports(path: Path) -> set[str]:
    """The repro modules `path` imports, anywhere in it (`from repro.train import runtime` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "repro":
            assert node.level == 0, f"{path}: relative import"
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "repro"}
    return {m for m in found if m in MODULES}


GRAPH = {m: imports(p) for m, p in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                found.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_circles_anywhere_in_the_package():
    assert cycles(GRAPH) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the scan sees one


def test_the_plotting_package_never_imports_training_or_benchmarks():
    for m, deps in GRAPH.items():
        if m.startswith("repro.plots"):
            assert not {d for d in deps if d.startswith(("repro.train", "repro.bench", "repro.data"))}, m


def test_nothing_imports_a_command_or_the_benchmarks_and_training_never_imports_plotting():
    for m, deps in GRAPH.items():
        if m.startswith(("repro.train", "repro.data")):
            assert not {d for d in deps if d.startswith(("repro.plots", "repro.bench"))}, m
        in_bench = m.startswith("repro.bench")  # the bench commands may share each other's measurements
        assert not {d for d in deps if (d in COMMANDS or d.startswith("repro.bench")) and not
                    (in_bench and d.startswith("repro.bench"))}, m


def test_importing_the_plotting_package_never_imports_torch():
    code = ("import sys, repro.plots.__main__, repro.plots.report, repro.plots.registry, repro.plots.figures; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_docs_layout_names_every_module(module):
    layout = (ROOT / "docs" / "layout.md").read_text()
    path = MODULES[module].relative_to(ROOT).as_posix()
    if path.endswith("__init__.py") and not MODULES[module].read_text().strip():
        return  # an empty package marker
    assert f"`{path}`" in layout, f"docs/layout.md does not name {path}"

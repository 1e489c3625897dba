"""The layers point one way (docs/ARCHITECTURE.md): what generates (networks, Model.sample,
samplers, Noise, loading a generator, metrics, the run folder) imports nothing from training;
training imports nothing of the application (CLI, demo); and no module hides an import of
the package inside a function (the CLI alone loads its commands lazily, for a fast --help)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "animegen"
APPLICATION = ("animegen.cli", "animegen.demo", "animegen.__main__", "animegen.web", "animegen.compare")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported module, imported inside a function?) for every import of the package."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.extend([(child.module, inside)] + [(f"{child.module}.{a.name}", inside) for a in child.names])
            visit(child, inside)

    visit(tree, False)
    return [(name, inside) for name, inside in found if name.split(".")[0] == "animegen"]


MODULES = {_module_name(p): _imports(ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    if module.startswith(APPLICATION):
        return "application"
    return "training" if module.startswith("animegen.training") else "generating"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    layer = _layer(module)
    for name, inside_function in MODULES[module]:
        if layer == "generating":
            assert not name.startswith("animegen.training"), f"{module} imports {name}"
        if layer != "application":
            assert not name.startswith(APPLICATION), f"{module} imports {name}"
            assert not inside_function, f"{module} imports {name} inside a function"


def test_loading_a_generator_loads_no_training_code():
    code = ("import sys; from animegen import generate, runs; from animegen.models import registry; "
            "[registry.model_class(n) for n in registry.names()]; "
            "print([m for m in sys.modules if m.startswith('animegen.training')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_check_sees_a_violation(tmp_path):
    """The parser above finds an upward import, also one hidden in a function."""
    tree = ast.parse("def f():\n    from animegen.training import loop\n")
    assert _imports(tree) == [("animegen.training", True), ("animegen.training.loop", True)]

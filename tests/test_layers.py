"""The layers: a floor of shared primitives under the solvers and the teachers, the harness on top.

Walks every import statement (top-level or inside a function) of the solvers' and teachers'
modules and of the floor's: solvers and teachers may import each other and the floor only, and the
floor only itself. A lower layer importing the harness (runner, cli, tables, trajectories, ...)
fails here with the module and the line.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def gasbench_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every gasbench module the file imports; `from gasbench import x` names gasbench.x."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("gasbench")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gasbench"):
            if node.module == "gasbench":
                found += [(node.lineno, f"gasbench.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def allowed_for(layer: str, module: str) -> bool:
    parts = module.split(".")
    if len(parts) == 1:
        return False  # `import gasbench` pulls in the whole package
    if parts[1] in ("solvers", "teachers"):
        return layer != "floor"
    return parts[1] == "core"


def layer_files() -> list[tuple[str, Path]]:
    files = [("solvers", p) for p in sorted((ROOT / "solvers").glob("*.py"))]
    files += [("teachers", p) for p in sorted((ROOT / "teachers").glob("*.py"))]
    files += [("floor", p) for p in sorted((ROOT / "bench" / "core").glob("*.py"))]  # gasbench.core
    return files


@pytest.mark.parametrize("layer, path", layer_files(), ids=lambda value: getattr(value, "name", value))
def test_lower_layers_never_import_higher_ones(layer, path):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for line, module in gasbench_imports(path) if not allowed_for(layer, module)]
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The check would catch a harness import hidden in a function body."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from gasbench.runner import run\n    from gasbench import tables\n")
    assert [m for _, m in gasbench_imports(sample)] == ["gasbench.runner", "gasbench.tables"]
    assert not allowed_for("solvers", "gasbench.runner") and allowed_for("solvers", "gasbench.core.seeds")
    assert not allowed_for("floor", "gasbench.solvers.executor")

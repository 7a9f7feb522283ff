"""The coord package imports only from the modules above it in its docstring's order, and
from the package's base modules (constants, errors, items)."""

import ast
from pathlib import Path

import nfs_watcher_uploader.coord as coord

PACKAGE = Path(coord.__file__).parent
BASE = {
    "nfs_watcher_uploader.constants",
    "nfs_watcher_uploader.errors",
    "nfs_watcher_uploader.items",
}


def _order() -> list[str]:
    doc = coord.__doc__ or ""
    listing = doc.split("tests/coord/test_layering.py checks:")[1]
    return [line.split()[0] for line in listing.strip().splitlines() if line.strip()]


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "nfs_watcher_uploader.coord":
                found |= {f"nfs_watcher_uploader.coord.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.startswith("nfs_watcher_uploader")}


def test_every_module_is_in_the_order_and_imports_only_from_above_it() -> None:
    order = _order()
    assert sorted(order) == sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    for i, module in enumerate(order):
        allowed = BASE | {f"nfs_watcher_uploader.coord.{m}" for m in order[:i]}
        assert _imports(module) <= allowed, (module, _imports(module) - allowed)


def test_every_module_says_its_job_in_its_first_docstring_line() -> None:
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.splitlines()[0]) > 10, path.name

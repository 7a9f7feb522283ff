"""The package's layers run one way: a module imports only from its own package and from the
layers below it (in the order the package docstring states), and no module imports in a cycle.
Imports are read from the source with `ast`, wherever they stand (in a function too)."""

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import nfs_watcher_uploader

PACKAGE = "nfs_watcher_uploader"
ROOT = Path(nfs_watcher_uploader.__file__).parent

Graph = Mapping[str, set[str]]


def stated_layers(doc: str) -> list[set[str]]:
    """The layers of the docstring's table, top first: each row's first column, by name."""
    lines = doc.split("Layers, top to bottom", 1)[1].splitlines()
    rows: list[set[str]] = []
    for line in lines:
        if line.startswith("    ") and not line.startswith("     "):
            first = line.strip().split("  ", 1)[0]
            rows.append({name.strip().rstrip("/") for name in first.split(",")})
    return rows


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules that `name` imports (`from pkg import mod` names the module)."""
    known = set(known)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                up = here[: len(here) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pkg import mod` imports the module; `from mod import name`, the module.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE + ".") and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, found) for name, path in found.items()}


def layer_of(module: str, layers: list[set[str]]) -> int | None:
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, row in enumerate(layers) if top in row), None)


def upward(imports: Graph, layers: list[set[str]]) -> list[str]:
    """Imports from a layer above the importer's (row 0 is the top)."""
    bad: list[str] = []
    for source, targets in sorted(imports.items()):
        mine = layer_of(source, layers)
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            same_package = source.split(".")[1] == target.split(".")[1]
            if mine is not None and theirs is not None and theirs < mine and not same_package:
                bad.append(f"{source} imports {target} from a layer above it")
    return bad


def cycles(imports: Graph) -> list[list[str]]:
    """Every group of modules that import one another in a circle (Tarjan's SCC)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in imports.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(imports):
        if node not in index:
            visit(node)
    return found


LAYERS = stated_layers(nfs_watcher_uploader.__doc__ or "")


def test_the_docstring_places_every_module_and_package_in_one_layer() -> None:
    tops = {name.split(".")[1] for name in modules() if "." in name}
    placed = [name for row in LAYERS for name in row]
    assert len(placed) == len(set(placed)), "a name stands in two layers"
    assert tops == set(placed), "place each new module or package in a layer of the docstring"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    assert upward(graph(), LAYERS) == []


def test_no_modules_import_each_other_in_a_cycle() -> None:
    assert cycles(graph()) == []


def test_an_upward_import_or_a_cycle_would_be_caught() -> None:
    """The checks themselves: an NFS module importing the pipeline is upward, and so is a
    cycle of two; imports within one package or down are not."""
    imports = {
        f"{PACKAGE}.nfs.moves": {f"{PACKAGE}.work.pipeline", f"{PACKAGE}.nfs.opening"},
        f"{PACKAGE}.work.pipeline": {f"{PACKAGE}.nfs.moves"},
        f"{PACKAGE}.nfs.opening": set(),
    }
    assert upward(imports, LAYERS) == [
        f"{PACKAGE}.nfs.moves imports {PACKAGE}.work.pipeline from a layer above it"
    ]
    assert cycles(imports) == [[f"{PACKAGE}.nfs.moves", f"{PACKAGE}.work.pipeline"]]


def test_the_imports_are_read_from_the_source_wherever_they_stand() -> None:
    """A function-level import counts (the old main <-> verify cycle was one)."""
    found = graph()
    assert f"{PACKAGE}.settings_checks" in found[f"{PACKAGE}.cloud.verify"]
    assert f"{PACKAGE}.nfs.moves" in found[f"{PACKAGE}.work.context"]

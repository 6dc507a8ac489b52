"""The package's import graph has no cycle, counting imports inside functions (a module that needs
another only inside a function still depends on it); imports under ``if TYPE_CHECKING:`` never run and
are left out. (That the report reads records without the training stack: tests/test_report.py.)"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import tomllib

import normbench

PACKAGE = Path(normbench.__file__).resolve().parent
ROOT = PACKAGE.parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` names the submodule a.b when
    there is one, else a)."""
    modules = module_names()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                found = known(target) if target.split(".")[0] == "normbench" else None
                if found and found != module:
                    graph[module].add(found)
    return graph


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "normbench.convert" in graph["normbench.tasks.models"]  # inside torchvision_classifier
    assert "normbench.report.cli" in graph["normbench.cli"]  # inside report()
    assert "normbench.report.study" in graph["normbench.report.rounds"]
    assert (
        "normbench.experiment.build" not in graph["normbench"]
    )  # under TYPE_CHECKING (and loaded lazily by name)


def test_the_package_has_no_import_cycle():
    try:
        list(TopologicalSorter(import_graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_a_cycle_would_be_found():
    with __import__("pytest").raises(CycleError):
        list(TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).static_order())


def test_the_version_is_pyprojects():
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert normbench.__version__ == tomllib.load(f)["project"]["version"]

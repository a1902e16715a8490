"""The data plane's layers read top-down: no import cycle among `unison` modules, and the
data plane (`unison`) never imports the operator (`unison_operator`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "node"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(NODE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST, *, typing_only: bool) -> list[ast.AST]:
    """Every node of `tree`; without `typing_only`, none under `if TYPE_CHECKING:` (those
    imports never run, so they make no cycle)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _is_type_checking(node) and not typing_only:
            assert isinstance(node, ast.If)
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, *, typing_only: bool = False) -> set[str]:
    """Every module an import statement in `path` names (also inside functions; under
    `if TYPE_CHECKING:` only with `typing_only`)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")), typing_only=typing_only):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


MODULES = {
    _module_name(p): p
    for p in sorted((NODE / "unison").rglob("*.py"))
    if "_pb2" not in p.name
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_the_data_plane_never_imports_the_operator(module: str) -> None:
    found = sorted(m for m in _imports(MODULES[module], typing_only=True)
                   if m == "unison_operator" or m.startswith("unison_operator."))
    assert not found, f"{module} imports {found}: the data plane must not import the operator"


def test_no_import_cycle_between_unison_modules() -> None:
    graph = {
        name: {m for m in _imports(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # A package's __init__ importing its own submodules is how packages re-export; only
    # edges out of a package count against it.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycle = stack[stack.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])

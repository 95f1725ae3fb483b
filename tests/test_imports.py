"""The package's import graph has no circle.

Every module of ``gradeclip_utils`` is read with ``ast`` (nothing is imported): imports at module level
and inside functions count alike, since a function-level import that dodges a circle still ties the two
modules together; imports under ``if TYPE_CHECKING:`` do not (they never run), nor do those under
``if __name__ == "__main__":`` (they run only in the module run as a program, not on import). A package's
``__init__`` is a module of its own; ``from .x import y`` depends on ``x``, and on ``x.y`` too when that
is a module. Importing a submodule is not counted as depending on its parent packages (Python runs their
``__init__`` first, but a package re-exporting its members would otherwise always be a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "gradeclip_utils"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def package_modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, a package's ``__init__.py`` under the package's own name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_main_block(test: ast.expr) -> bool:
    """``__name__ == "__main__"``: a block that runs when the module is the program (``python -m``), a module
    apart from the imported one, never when it is imported."""
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _runtime_imports(tree: ast.AST):
    """Import statements that can run on import: everything but the bodies of ``if TYPE_CHECKING:`` and
    ``if __name__ == "__main__":`` (the ``python -m`` aliases call the command line from there)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and (_is_type_checking(node.test) or _is_main_block(node.test)):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def dependencies(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package modules ``name`` imports, each with the line of its first import."""
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in modules and target != name:
            found.setdefault(target, line)

    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
            continue
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            add(submodule if submodule in modules else source, node.lineno)
    return found


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    modules = package_modules()
    return {name: dependencies(name, path, modules) for name, path in modules.items()}, modules


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One circle of the graph (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read():
    graph, modules = import_graph()
    assert f"{PACKAGE}.adapters" in graph and f"{PACKAGE}.methods.grad_eclip" in graph
    assert f"{PACKAGE}.adapters" in graph[f"{PACKAGE}.loading"]  # `from .adapters import ...`
    assert all(target in modules for deps in graph.values() for target in deps)


def test_the_cycle_finder_sees_circles_and_type_checking_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("def f():\n    from .sub import VALUE, c\n")
    (package / "sub" / "__init__.py").write_text("VALUE = 1\n")
    (package / "sub" / "c.py").write_text("from ..a import x\n")
    modules = package_modules(package, "pkg")
    graph = {name: dependencies(name, path, modules) for name, path in modules.items()}
    assert graph["pkg.a"] == {}
    assert set(graph["pkg.b"]) == {"pkg.sub", "pkg.sub.c"}  # VALUE from the package, c the module
    assert set(graph["pkg.sub.c"]) == {"pkg.a"}
    assert find_cycle(graph) is None
    (package / "a.py").write_text("import pkg.b\n")
    graph["pkg.a"] = dependencies("pkg.a", package / "a.py", modules)
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


def test_no_import_cycle():
    graph, modules = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} (line {graph[a][b]} of {modules[a].relative_to(ROOT.parent)}) imports {b}"
                 for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(steps))


def test_every_module_imports_first():
    """Each module of the package imported first, in a fresh state (the package's modules dropped before each):
    an import-time circle through package ``__init__`` files, which the static graph does not count, fails here
    with the module that starts it."""
    import subprocess
    import sys

    names = sorted(package_modules())
    code = (
        "import importlib, sys, traceback\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'gradeclip_utils' or m.startswith('gradeclip_utils.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        print(name, traceback.format_exc(limit=-3))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, timeout=600)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_every_exported_name_exists():
    """``from MODULE import *`` works for every module: each name its ``__all__`` lists is defined."""
    import importlib
    import pkgutil

    import gradeclip_utils

    missing = []
    for info in pkgutil.walk_packages(gradeclip_utils.__path__, "gradeclip_utils."):
        module = importlib.import_module(info.name)
        missing += [f"{info.name}.{name}" for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
    assert not missing, missing

"""The package's import rules (docs/architecture.md), checked on the source tree.

1. Each part imports only the parts below it: ``core`` nothing outside ``core``; ``train`` the core;
   ``bench`` the core and ``train``; ``classroom`` those three; ``serve`` the core; ``cli`` anything.
2. No import cycle between files, counting imports inside functions too (they hide cycles).
3. No ``_private`` name imported from another odistill module.

The checker reads the files with :mod:`ast` (nothing is imported), so it also runs on a copy of the
tree with a planted violation: each rule is shown to fail there.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "odistill"

#: part → the parts it may import (itself included). Files at the top of the package are free: they
#: re-export the public API lazily.
ALLOWED = {
    "core": {"core"},
    "train": {"core", "train"},
    "bench": {"core", "train", "bench"},
    "classroom": {"core", "train", "bench", "classroom"},
    "serve": {"core", "serve"},
    "cli": {"core", "train", "bench", "classroom", "serve", "cli"},
}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(root: Path, path: Path, modules: set[str]) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` for every import of an odistill module in ``path``: import
    statements, ``importlib.import_module("odistill.…")`` calls, and ``alias._name`` attribute reads on a
    module imported as a name (reported as importing ``_name`` from it)."""
    name = _module_name(root, path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found, aliases = [], {}
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
        ):
            arg = node.args[0] if node.args else None
            if (
                isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and arg.value.startswith(root.name)
            ):
                found.append((node.lineno, arg.value, []))
        if isinstance(node, ast.Import):
            aliases.update({(a.asname or a.name): a.name for a in node.names if a.asname})
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            names = [a.name for a in node.names]
            aliases.update(
                {
                    (a.asname or a.name): f"{target}.{a.name}"
                    for a in node.names
                    if f"{target}.{a.name}" in modules
                }
            )
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            found += [(node.lineno, m, []) for m in submodules]  # `from . import chunked` imports a module
            rest = [n for n in names if f"{target}.{n}" not in modules]
            if rest or not submodules:
                found.append((node.lineno, target, rest))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append((node.lineno, aliases[node.value.id], [node.attr]))
    return found


def check_tree(root: Path) -> list[str]:
    """Every violation of the three rules in the package at ``root``, as readable lines."""
    files = {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    violations, graph = [], {m: set() for m in modules}
    for module, path in files.items():
        part = module.split(".")[1] if module.count(".") >= 1 and module.split(".")[1] in ALLOWED else None
        for line, target, names in _imports(root, path, modules):
            where = f"{path.relative_to(root.parent)}:{line}"
            target_part = target.split(".")[1] if target.count(".") >= 1 else None
            if part is not None and target == root.name:  # the package root re-exports every part
                violations.append(f"{where}: {module} ({part}) imports the package root {root.name}")
            if part is not None and target_part in ALLOWED and target_part not in ALLOWED[part]:
                violations.append(f"{where}: {module} ({part}) imports {target} ({target_part})")
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    violations.append(f"{where}: {module} imports the private name {n} from {target}")
            if target in modules and target != module:
                graph[module].add(target)
    violations += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return violations


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_cycle_path(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """An actual cycle through the first module of a strongly connected component (breadth-first)."""
    start = min(component)
    parents, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in parents:
                parents[w] = v
                queue.append(w)
    return sorted(component)


def test_the_package_follows_its_import_rules():
    assert check_tree(PACKAGE) == []


@pytest.fixture
def tree_copy(tmp_path):
    copy = tmp_path / "odistill"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("checkpoints", "__pycache__"))
    return copy


def _plant(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_a_core_module_importing_the_bench_is_caught(tree_copy):
    _plant(tree_copy / "core" / "loss.py", "from ..bench.models import load_model")
    assert any(
        "odistill.core.loss (core) imports odistill.bench.models (bench)" in v for v in check_tree(tree_copy)
    )


def test_a_cycle_hidden_in_a_function_is_caught(tree_copy):
    _plant(tree_copy / "core" / "tensor_ops.py", "def _late():\n    from .divergences import forward_kl")
    cycles = [v for v in check_tree(tree_copy) if v.startswith("import cycle")]
    assert cycles and "odistill.core.divergences" in cycles[0] and "odistill.core.tensor_ops" in cycles[0]


def test_a_private_import_is_caught(tree_copy):
    _plant(tree_copy / "train" / "steps.py", "from ..core.divergences import _kl_rows")
    assert any("imports the private name _kl_rows" in v for v in check_tree(tree_copy))


def test_private_attribute_of_an_imported_module_is_caught(tree_copy):
    _plant(tree_copy / "core" / "fused.py", "from . import chunked\nROWS = chunked._Rows")
    assert any(
        "imports the private name _Rows from odistill.core.chunked" in v for v in check_tree(tree_copy)
    )


def test_root_and_dynamic_imports_are_caught(tree_copy):
    _plant(tree_copy / "core" / "loss.py", "import odistill")
    _plant(
        tree_copy / "core" / "teacher.py", "import importlib\nimportlib.import_module('odistill.bench.tasks')"
    )
    found = check_tree(tree_copy)
    assert any("imports the package root odistill" in v for v in found)
    assert any("odistill.core.teacher (core) imports odistill.bench.tasks (bench)" in v for v in found)


def test_train_importing_the_cli_is_caught(tree_copy):
    _plant(tree_copy / "train" / "trainer.py", "import odistill.cli.distill")
    assert any("(train) imports odistill.cli.distill (cli)" in v for v in check_tree(tree_copy))

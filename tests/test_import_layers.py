"""Imports flow one way: the import graph of fiat_jax/ and tasks/, read from the source (module-level and
in-function imports alike), has no cycles, follows the layer order, and every in-function import says why it is
lazy.

Layers, lowest first: the root utilities (errors, gin_utils, partitioning, redact, run_dirs, compile_cache,
native_logs) -> data -> models -> peft -> train -> teachers -> methods -> sweeps -> cli (cli.py, export.py,
tasks_command.py). A module may import its own layer and the layers below it. ``tasks/`` holds registrations only:
it may import the root utilities, data and teachers, and only the cli layer imports it.

``import a.b`` runs ``a/__init__.py`` too, but the edge drawn is to the module named (``from a import b`` is an
edge to ``a.b`` when ``b`` is a module): a package's ``__init__`` is not an importer of everything under it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("fiat_jax", "tasks")
LAYERS = ("base", "data", "models", "peft", "train", "teachers", "methods", "sweeps", "cli")
BASE_MODULES = {"fiat_jax", "fiat_jax.errors", "fiat_jax.gin_utils", "fiat_jax.partitioning", "fiat_jax.redact",
                "fiat_jax.run_dirs", "fiat_jax.compile_cache", "fiat_jax.native_logs", "fiat_jax.atomic_files"}
CLI_MODULES = {"fiat_jax.cli", "fiat_jax.export", "fiat_jax.tasks_command"}
TASKS_MAY_IMPORT = {"base", "data", "teachers", "tasks"}
LAZY_REASON = re.compile(r"#\s*lazy:\s*\S")

# Violations allowed: none (the one-pipeline redesign fixed the last of them); the test fails on any violation.
KNOWN_VIOLATIONS: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # the module imported


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files(root: pathlib.Path, packages: tuple[str, ...] = PACKAGES) -> list[pathlib.Path]:
    return sorted(p for package in packages for p in (root / package).rglob("*.py"))


@functools.lru_cache(maxsize=None)
def _parsed(path: pathlib.Path) -> tuple[ast.Module, list[str], set[int]]:
    """The file's AST, its lines and the ids of the import nodes inside functions (parsed once per run)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    return tree, text.splitlines(), _function_import_ids(tree)


def _resolve(name: str, modules: set[str]) -> str | None:
    """``name`` or the longest prefix of it that is one of ``modules`` (an attribute import names its module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _function_import_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            ids.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    return ids


def _has_reason(lines: list[str], node: ast.stmt) -> bool:
    """A ``# lazy: <reason>`` on the import's lines, or on a comment line just above it."""
    above = lines[node.lineno - 2] if node.lineno > 1 else ""
    span = lines[node.lineno - 1:node.end_lineno] + ([above] if above.lstrip().startswith("#") else [])
    return any(LAZY_REASON.search(line) for line in span)


def imports_in(root: pathlib.Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """Every import of a first-party module in the source files under ``root``."""
    files = source_files(root, packages)
    modules = {module_name(p, root) for p in files}
    found = []
    for path in files:
        importer = module_name(path, root)
        tree, _, _ = _parsed(path)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = importer.split(".")
                    base = base[:len(base) - node.level + (1 if is_package else 0)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                         for alias in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, modules)
                if target and target.split(".")[0] in packages and target != importer:
                    found.append(Import(importer, target))
    return found


def layer_of(module: str) -> str:
    if module.split(".")[0] == "tasks":
        return "tasks"
    if module in BASE_MODULES:
        return "base"
    if module in CLI_MODULES:
        return "cli"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module} belongs to no layer: add it to BASE_MODULES / CLI_MODULES or a layer package")


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components (more than one module) of the import graph, each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:  # Tarjan; the graph is small enough for recursion
        index[v] = low[v] = len(index)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def violations(imports: list[Import]) -> set[str]:
    """One line per broken rule: ``cycle: ...``, ``upward: a -> b``, ``tasks: a -> b``, ``lazy: file imports m``."""
    found = {"cycle: " + " <-> ".join(c) for c in cycles(imports)}
    for imp in imports:
        have, want = layer_of(imp.importer), layer_of(imp.target)
        if want == "tasks" and have not in ("tasks", "cli"):
            found.add(f"tasks: {imp.importer} -> {imp.target}")
        elif have == "tasks" and want not in TASKS_MAY_IMPORT:
            found.add(f"upward: {imp.importer} -> {imp.target}")
        elif have != "tasks" and want != "tasks" and LAYERS.index(want) > LAYERS.index(have):
            found.add(f"upward: {imp.importer} -> {imp.target}")
    return found


def lazy_violations(root: pathlib.Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """``lazy: <file> imports <module>`` for each in-function import (of any module) without a ``# lazy:`` reason."""
    files = source_files(root, packages)
    modules = {module_name(p, root) for p in files}
    found = set()
    for path in files:
        tree, lines, in_function = _parsed(path)
        for node in ast.walk(tree):
            if id(node) not in in_function or _has_reason(lines, node):
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                source = "." * node.level + (node.module or "")
                names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                         for alias in node.names]
            found.update(f"lazy: {path.relative_to(root)} imports {name}" for name in names)
    return found


def all_violations(root: pathlib.Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    return violations(imports_in(root, packages)) | lazy_violations(root, packages)


def test_the_import_graph_has_no_cycles_flows_one_way_and_says_why_imports_are_lazy():
    found = all_violations(REPO)
    new = sorted(found - KNOWN_VIOLATIONS)
    fixed = sorted(KNOWN_VIOLATIONS - found)
    assert not new, "import rules broken (see this module's docstring):\n" + "\n".join(new)
    assert not fixed, "no longer violated: remove from KNOWN_VIOLATIONS:\n" + "\n".join(fixed)


def test_every_module_has_a_layer():
    for path in source_files(REPO):
        layer_of(module_name(path, REPO))


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_cycle_an_upward_import_a_tasks_import_and_an_unexplained_lazy_import(tmp_path):
    _write(tmp_path, {
        "fiat_jax/__init__.py": "",
        "fiat_jax/data/__init__.py": "",
        "fiat_jax/data/a.py": "from fiat_jax.data import b\n",
        "fiat_jax/data/b.py": "def f():\n    from fiat_jax.data import a  # lazy: breaks nothing\n",
        "fiat_jax/data/up.py": "import fiat_jax.train.loop\n",
        "fiat_jax/data/reg.py": "from tasks import common\n",
        "fiat_jax/train/__init__.py": "",
        "fiat_jax/train/loop.py": "def g():\n    import json\n    from fiat_jax.data import a\n",
        "tasks/__init__.py": "",
        "tasks/common.py": "from fiat_jax.train import loop\nfrom fiat_jax.data import a\n",
    })
    found = all_violations(tmp_path)
    assert found == {
        "cycle: fiat_jax.data.a <-> fiat_jax.data.b",
        "upward: fiat_jax.data.up -> fiat_jax.train.loop",
        "tasks: fiat_jax.data.reg -> tasks.common",
        "upward: tasks.common -> fiat_jax.train.loop",
        "lazy: fiat_jax/train/loop.py imports json",
        "lazy: fiat_jax/train/loop.py imports fiat_jax.data.a",
    }


def test_a_package_init_is_not_an_importer_of_its_submodules_importers(tmp_path):
    # fiat_jax.models lazily imports its decoder, which imports a sibling through the package: no cycle.
    _write(tmp_path, {
        "fiat_jax/__init__.py": "",
        "fiat_jax/models/__init__.py": "def build():\n    from fiat_jax.models.decoder import D  # lazy: light\n",
        "fiat_jax/models/decoder.py": "from fiat_jax.models import layers\nD = 1\n",
        "fiat_jax/models/layers.py": "",
    })
    assert all_violations(tmp_path) == set()
    targets = {(i.importer, i.target) for i in imports_in(tmp_path)}
    assert targets == {("fiat_jax.models", "fiat_jax.models.decoder"),
                       ("fiat_jax.models.decoder", "fiat_jax.models.layers")}


@pytest.mark.parametrize("module, layer", [("fiat_jax.errors", "base"), ("fiat_jax.export", "cli"),
                                           ("fiat_jax.peft.lora", "peft"), ("tasks.common", "tasks")])
def test_layers_of_named_modules(module, layer):
    assert layer_of(module) == layer

"""The code's own rules, checked by reading the source (no import side effects).

* no module imports another module's private (underscore) name; private *modules* of the
  package (``_utils``, ``lwta_kernel``) are shared helpers and may be imported;
* the package's modules import each other without cycles (module-level and function-level
  imports both count);
* nothing loads with ``weights_only=False`` and nothing uses pickle: a run folder or cache
  from someone else must not be able to execute code;
* no module is over :data:`MAX_MODULE_LINES` lines and no function over
  :data:`MAX_FUNCTION_LINES`, except the entries of :data:`SIZE_ALLOWED`, each with its reason;
* only a package's ``__init__`` re-exports: a module's ``__all__`` lists what the module
  defines, and code, tests and benchmarks import each name from the module that defines it or
  from a package, never through a module that merely imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "discover"


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, ast.Module]):
    """(importer, imported module, imported names) for every discover-internal import."""
    for name, tree in modules.items():
        is_package = (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").is_file()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, node, is_package)
                if target == "discover" or target.startswith("discover."):
                    yield name, target, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("discover"):
                        yield name, alias.name, []


def test_no_private_name_is_imported_across_modules():
    modules = _modules()
    offences = []
    for importer, target, names in _imports(modules):
        for imported in names:
            is_module = f"{target}.{imported}" in modules
            if imported.startswith("_") and not imported.startswith("__") and not is_module:
                offences.append(f"{importer} imports {target}.{imported}")
    assert not offences, "private names imported across modules:\n" + "\n".join(offences)


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for importer, target, names in _imports(modules):
        for imported in names or [""]:
            full = f"{target}.{imported}" if imported else target
            dependency = full if full in modules else target
            if dependency in modules and dependency != importer:  # the package root included
                graph[importer].add(dependency)
    cycles = []

    def visit(node: str, stack: list[str], seen: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_nothing_unpickles():
    offences = []
    for folder in ("src", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.keyword) and node.arg == "weights_only":
                    if not (isinstance(node.value, ast.Constant) and node.value.value is True):
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno} weights_only")
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                    if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno} pickle import")
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load":
                    owner = getattr(node.func.value, "id", "")
                    keywords = {k.arg for k in node.keywords}
                    if owner == "torch" and "weights_only" not in keywords:
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno} torch.load")
    assert not offences, "code that can unpickle:\n" + "\n".join(offences)


# The stages, in data-flow order, and what each may import (besides itself, _utils and errors,
# the exception types every stage raises).
# A later stage reads what an earlier one saved; an earlier stage never imports a later one.
LAYERS: dict[str, set[str]] = {
    "nn": set(),
    "data": set(),
    "training": {"nn", "data"},
    "dissection": {"nn", "data"},
    "evaluation": {"nn", "data", "training", "dissection"},
    "explanation": {"nn", "data", "training", "dissection"},  # explain_run loads a run
    "report": {"nn", "data", "dissection", "evaluation", "explanation"},
    "demo": {"nn", "data", "training", "dissection", "evaluation", "explanation", "report"},
    "cli": {"nn", "data", "training", "dissection", "evaluation", "explanation", "report", "demo"},
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_stages_import_only_earlier_stages():
    modules = _modules()
    shared = {"_utils", "errors", "version"}  # any stage may import these
    assert {_stage(m) for m in modules} - {""} == set(LAYERS) | shared | {"__main__"}
    offences = []
    for importer, target, names in _imports(modules):
        stage = _stage(importer)
        if stage not in LAYERS:
            continue
        targets = {
            _stage(f"{target}.{n}") if target == "discover" else _stage(target)
            for n in names or [""]
        }
        for dependency in targets - {stage, ""} - shared:
            if dependency not in LAYERS[stage]:
                offences.append(f"{importer} ({stage}) imports {target} ({dependency})")
    assert not offences, "a stage imports a later one:\n" + "\n".join(sorted(offences))


# Size limits: a module or function past them is split along a seam a reader can follow.
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 100
SIZE_ALLOWED: dict[str, str] = {
    # "discover.module" or "discover.module:function": why it stays long
}


def test_modules_and_functions_stay_within_the_size_limits():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and module not in SIZE_ALLOWED:
            offences.append(f"{module}: {lines} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                where = f"{module}:{node.name}"
                if length > MAX_FUNCTION_LINES and where not in SIZE_ALLOWED:
                    offences.append(f"{where}: {length} lines (limit {MAX_FUNCTION_LINES})")
    stale = [k for k in SIZE_ALLOWED if k.split(":")[0] not in _modules()]
    assert not stale, f"allow-list entries for modules that no longer exist: {stale}"
    assert not offences, "too long:\n" + "\n".join(offences)


def test_dotted_names_in_the_source_exist():
    """Every ``discover.x.y`` written in the package (docstrings, saved metadata, messages)
    names a module that exists and, after the module, an attribute it has: no stale names
    from modules that were moved or removed."""
    import importlib
    import importlib.util
    import re

    stale = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for match in re.finditer(r"(?<![\w/.-])discover(?:\.[A-Za-z_]\w*)+", path.read_text()):
            parts = match.group(0).split(".")
            for i in range(len(parts), 0, -1):  # the longest importable prefix
                try:
                    if importlib.util.find_spec(".".join(parts[:i])) is not None:
                        break
                except ModuleNotFoundError:  # a parent that is a module, not a package
                    continue
            module = importlib.import_module(".".join(parts[:i]))
            if i < len(parts) and not hasattr(module, parts[i]):
                stale.add(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not stale, "names of things that do not exist:\n" + "\n".join(sorted(stale))


def _defined(tree: ast.Module) -> set[str]:
    """The names a module's top level defines itself (functions, classes, assignments), not
    the ones it imports; statements under a top-level ``if``/``try``/``with`` count."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending.extend(ast.iter_child_nodes(node))
    return names


def _is_package(module: str) -> bool:
    return (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").is_file()


def test_modules_export_only_what_they_define():
    """Only a package's ``__init__`` re-exports (its public surface); a module's ``__all__``
    lists what the module itself defines, so every name has one import path besides its
    package's: the module that defines it (no names left behind, imported back, when a module
    is split)."""
    offences = []
    for name, tree in _modules().items():
        if _is_package(name):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                assert isinstance(node.value, (ast.List, ast.Tuple)), f"{name}: __all__ literal"
                exported = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
                offences += [f"{name}.{n}" for n in exported if n not in _defined(tree)]
    assert not offences, "re-exported by a module that does not define them:\n" + "\n".join(
        offences
    )


def test_names_are_imported_from_where_they_are_defined():
    """Code, tests and benchmarks import a discover name from the module that defines it or
    from a package, never through another module that merely imports it."""
    modules = _modules()
    defined = {name: _defined(tree) for name, tree in modules.items()}
    offences = []
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            is_package = path.name == "__init__.py"
            parts = path.relative_to(ROOT / "src").with_suffix("").parts if folder == "src" else ()
            importer = ".".join(parts[:-1] if is_package else parts)
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                target = _resolve(importer, node, is_package)
                if target not in modules or _is_package(target):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if (
                        alias.name != "*"
                        and full not in modules
                        and alias.name not in defined[target]
                    ):
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno} {full}")
    assert not offences, "names imported through a module that does not define them:\n" + (
        "\n".join(offences)
    )

"""Rules for the modules the exporter inlines, and their checker.

`models/remote_code.py` writes an exported model's `configuration_<family>.py` / `modeling_<family>.py` by
copying the family's `configuration.py` / `modeling.py` with every project module they import at top level
inlined before them (transitively): today `models/recurrent.py`, `layers/hgrn2.py`, `ops/hgrn2/api.py`,
`ops/hgrn2/chunk.py` and `models/hf_compat.py` (it serves the transformers names 4.x lacks: a
`from transformers import` of a name in its `__all__` is dropped and the shim defines it). Their top-level
code is copied verbatim into one file and their project imports are dropped, so each of these modules (they
say so in their docstring) keeps to:

1. top-level project imports name things, not modules: `from babylm_ds.x import name` (or the relative
   form); never `import babylm_ds.x`, nor `from babylm_ds.x import submodule`;
2. no `as` on a top-level project import: the copied code must use the name its defining module gives;
3. every top-level name (function, class, assignment, third-party import) is unique across the modules
   inlined into one file;
4. a project import inside a function (the compiled or Triton kernels) stays in the copy, so it must sit
   in a `try:` that catches ImportError: the exported folder runs with torch + transformers alone.

`violations(modules)` names every breach as `path:line: rule`; tests/test_export_rules.py runs it on the
modules of every family, so a breach fails there, before any export.
"""
import ast
import importlib
import inspect
import os

from babylm_ds.models.remote_code import _SHIM, _absolute  # as the exporter reads an ImportFrom; its shim module

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _project(root):
    return lambda name: name == root or (name or "").startswith(root + ".")


def _where(module, node):
    path = inspect.getsourcefile(module)
    return f"{os.path.relpath(path, _REPO) if path.startswith(_REPO + os.sep) else path}:{node.lineno}"


def _catches_import_error(handlers):
    names = {getattr(h.type, "id", None) for h in handlers} | {
        getattr(e, "id", None) for h in handlers if isinstance(h.type, ast.Tuple) for e in h.type.elts}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception"}) or any(h.type is None for h in handlers)


def _nested_imports(tree):
    """Project-import candidates inside functions, each with whether a try catching ImportError guards it."""
    found = []

    def visit(node, in_function, guarded):
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            guard = guarded or isinstance(child, ast.Try) and _catches_import_error(child.handlers)
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                found.append((child, guarded))
            if isinstance(node, ast.Try) and child in node.handlers + node.orelse + node.finalbody:
                guard = guarded  # only the try body is guarded
            visit(child, func, guard)

    visit(tree, False, False)
    return found


def _served(node, package):
    """The names of a `from transformers import ...` that the export's shim (models/hf_compat.py) serves."""
    if package != "babylm_ds" or not isinstance(node, ast.ImportFrom):
        return set()
    if (node.module or "").split(".")[0] != "transformers":
        return set()
    return {alias.name for alias in node.names} & set(importlib.import_module(_SHIM).__all__)


def inlined_modules(module_name, local=(), package="babylm_ds"):
    """The project modules inlined with `module_name` (it first), not descending into `local` (modules the
    generated file imports from a sibling file, e.g. the family's configuration)."""
    _is_project = _project(package)
    order, stack = [], [module_name]
    while stack:
        name = stack.pop()
        if name in order or name in local:
            continue
        order.append(name)
        module = importlib.import_module(name)
        for node in ast.parse(inspect.getsource(module)).body:
            if _served(node, package):
                stack.append(_SHIM)
            if isinstance(node, ast.ImportFrom) and _is_project(source := _absolute(node, module)):
                for alias in node.names:  # each name from the module that defines it (constants: the source)
                    obj = getattr(importlib.import_module(source), alias.name, None)
                    defining = getattr(inspect.getmodule(obj), "__name__", source)
                    if not inspect.ismodule(obj):
                        stack.append(defining if _is_project(defining) else source)
    return order


def violations(modules, package="babylm_ds"):
    """['path:line: rule broken'] of the modules named in `modules`, inlined together into one file
    (`package`: the project's top-level package)."""
    _is_project = _project(package)
    out, owners = [], {}
    for name in modules:
        module = importlib.import_module(name)
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_project(alias.name):
                        out.append(f"{_where(module, node)}: `import {alias.name}`: import names, "
                                   f"`from {alias.name.rpartition('.')[0] or alias.name} import ...` (rule 1)")
                    else:
                        owners.setdefault(alias.asname or alias.name.split(".")[0], []).append(
                            (_where(module, node), alias.name))
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, module)
                for alias in node.names:
                    if alias.name in _served(node, package):
                        continue  # the shim defines it
                    if not _is_project(source):
                        owners.setdefault(alias.asname or alias.name, []).append(
                            (_where(module, node), f"{source}.{alias.name}"))
                        continue
                    if alias.asname and alias.asname != alias.name:
                        out.append(f"{_where(module, node)}: `{alias.name} as {alias.asname}` on a project import "
                                   "(rule 2)")
                    if inspect.ismodule(getattr(importlib.import_module(source), alias.name, None)):
                        out.append(f"{_where(module, node)}: `from {source} import {alias.name}` imports a module; "
                                   "import its names (rule 1)")
            else:
                for target in _defined(node):
                    owners.setdefault(target, []).append((_where(module, node), None))
        for node, guarded in _nested_imports(tree):
            sources = [a.name for a in node.names] if isinstance(node, ast.Import) else [_absolute(node, module)]
            if any(_is_project(s) for s in sources) and not guarded:
                out.append(f"{_where(module, node)}: a project import inside a function must sit in a try that "
                           "catches ImportError (rule 4)")
    for name, places in owners.items():
        kinds = {what for _, what in places}
        if len(places) > 1 and (None in kinds or len(kinds) > 1):  # the same third-party import twice is fine
            out.append(f"{places[1][0]}: top-level name {name!r} is also defined at {places[0][0]} (rule 3)")
    return out


def _defined(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name) and n.id != "__all__"]
    return []

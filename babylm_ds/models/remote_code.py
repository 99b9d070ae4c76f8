"""Self-contained HF model folders: `configuration_<family>.py`, `modeling_<family>.py` and `auto_map`.

The files are generated from the project's own modules, never kept by hand: a family's
`configuration.py` / `modeling.py` is copied with every `babylm_ds` module it imports at top level
inlined before it (transitively, each name resolved to the module that defines it, e.g. the HGRN2
layer, the op's dispatcher and its chunked PyTorch backend). Comments and code are kept verbatim;
only the project imports are dropped and the third-party imports hoisted. Imports of the project
inside functions (the compiled / Triton kernels, always under `try: ... except ImportError`) stay,
so the folder runs with torch + transformers alone and uses babylm_ds's kernels where it is installed.
The inlined modules keep the rules stated in `models/export_rules.py` (checked by tests/test_export_rules.py).

The project is written against transformers 5.x; an export runs on 4.46 – 5.x: the transformers names
that `models/hf_compat.py` lists in its `__all__` (the config and model bases, the cache classes, ...)
are not imported from transformers but served by that module, inlined like a project module (it takes
transformers' own class where one exists); an import of one under another name becomes an assignment.
"""
import ast
import copy
import importlib
import inspect
import json
import os
import re

from babylm_ds.models.registry import family_of
from babylm_ds.utils.io import atomic_write_json

_ROOT = "babylm_ds"
_SHIM = "babylm_ds.models.hf_compat"
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _is_project(module_name):
    return module_name == _ROOT or module_name.startswith(_ROOT + ".")


def _absolute(node, module):
    """The absolute module name of an `ImportFrom` node found in `module`."""
    if not node.level:
        return node.module
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _defining_module(module_name, name):
    """The project module that defines `module_name`'s attribute `name` (following re-exports)."""
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.ismodule(obj):
        raise ValueError(f"from {module_name} import {name}: importing a module is not supported; import its names")
    defining = getattr(inspect.getmodule(obj), "__name__", module_name)
    if getattr(obj, "__name__", name) != name:
        raise ValueError(f"{module_name}.{name} is an alias of {obj.__name__}; import it under its own name")
    return defining if _is_project(defining) else module_name


class _Bundle:
    """Modules in dependency order, with the third-party import lines they need."""

    def __init__(self, local):
        self.local = local  # {project module name: relative module that replaces it, e.g. ".configuration_x"}
        self.order, self.imports, self.bound, self.local_imports, self.aliases = [], {}, {}, {}, {}

    def add(self, module_name, stack=()):
        if module_name in self.order or module_name in self.local:
            return
        if module_name in stack:
            raise ValueError(f"import cycle through {' -> '.join(stack + (module_name,))}")
        module = importlib.import_module(module_name)
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if isinstance(node, ast.Import):
                if any(_is_project(a.name) for a in node.names):
                    raise ValueError(f"{module_name}:{node.lineno}: use `from babylm_ds.x import name` in "
                                     "modules that are exported")
                self._bind(node, module_name)
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, module)
                if not _is_project(source):
                    node = self._serve(node, module_name, stack)
                    if node.names:
                        self._bind(node, module_name)
                    continue
                for alias in node.names:
                    if alias.asname and alias.asname != alias.name:
                        raise ValueError(f"{module_name}:{node.lineno}: `as` on a project import is not supported")
                    target = _defining_module(source, alias.name)
                    if target in self.local:
                        self.local_imports.setdefault(self.local[target], set()).add(alias.name)
                    else:
                        self.add(target, stack + (module_name,))
        self.order.append(module_name)

    def _serve(self, node, where, stack):
        """`node` without the transformers names the shim serves; those bring the shim in (and their aliases)."""
        served = set(importlib.import_module(_SHIM).__all__) if node.module.split(".")[0] == "transformers" else ()
        kept = [alias for alias in node.names if alias.name not in served]
        if len(kept) < len(node.names):
            self.add(_SHIM, stack + (where,))
            for alias in node.names:
                if alias.name in served and alias.asname and alias.asname != alias.name:
                    if self.bound.setdefault(alias.asname, f"{_SHIM}.{alias.name}") != f"{_SHIM}.{alias.name}":
                        raise ValueError(f"{where}: {alias.asname!r} names both {self.bound[alias.asname]} and "
                                         f"{_SHIM}.{alias.name}")
                    self.aliases[alias.asname] = alias.name
        return ast.ImportFrom(module=node.module, names=kept, level=node.level)

    def _bind(self, node, where):
        """Keep a third-party import; refuse two imports that bind one name to different things."""
        self.imports.setdefault(ast.unparse(node), None)
        for alias in node.names:
            if isinstance(node, ast.Import):
                bound = alias.asname or alias.name.split(".")[0]
                what = alias.name if alias.asname else bound
            else:
                bound, what = alias.asname or alias.name, f"{node.module}.{alias.name}"
            if self.bound.setdefault(bound, what) != what:
                raise ValueError(f"{where}: {bound!r} names both {self.bound[bound]} and {what}")

    def body(self, module_name):
        """The module's source with its docstring turned into comments, without top-level imports and __all__."""
        source = inspect.getsource(importlib.import_module(module_name))
        tree, lines = ast.parse(source), source.splitlines()
        drop, doc = set(), []
        for i, node in enumerate(tree.body):
            is_all = isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
            if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                doc = [f"# {line}".rstrip() for line in node.value.value.strip().splitlines()]
            elif not (is_all or isinstance(node, (ast.Import, ast.ImportFrom))):
                continue
            drop.update(range(node.lineno - 1, node.end_lineno))
        return "\n".join(doc + [""] + [line for i, line in enumerate(lines) if i not in drop]).strip("\n")

    def defined_names(self, module_name):
        """Names the module binds at top level, in `try` / `if` blocks too (imports there included)."""
        tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
        names, nodes = set(), list(tree.body)
        while nodes:
            node = nodes.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Try, ast.If)):
                nodes += node.body + node.orelse + getattr(node, "finalbody", [])
                nodes += [n for handler in getattr(node, "handlers", []) for n in handler.body]
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and node not in tree.body:
                names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        return names - {"__all__"}


def generate(module_name, local=None, title=""):
    """Source of a standalone file holding `module_name` and every project module it needs.

    `local` maps project modules to sibling files of the generated one (imported relatively)."""
    bundle = _Bundle(dict(local or {}))
    bundle.add(module_name)
    owner = {}
    for name in bundle.order:
        for defined in bundle.defined_names(name):
            if defined in owner or defined in bundle.bound:
                raise ValueError(f"{defined!r} is defined in both {owner.get(defined, 'an import')} and {name}; "
                                 "rename one so the modules can share one file")
            owner[defined] = name
    files = [importlib.import_module(n).__file__ for n in bundle.order]
    sources = ", ".join(os.path.relpath(f, _REPO) for f in files)
    header = [f'"""{title}\n\nGenerated by babylm_ds.models.remote_code from {sources}; do not edit."""']
    imports = sorted(bundle.imports, key=lambda s: (not s.startswith("from __future__"),
                                                                  not s.startswith("import "), s))
    imports += [f"from {rel} import {', '.join(sorted(names))}" for rel, names in sorted(bundle.local_imports.items())]
    parts = ["\n".join(header), "\n".join(imports)]
    parts += [f"# ---- {os.path.relpath(f, _REPO)} ----\n\n{bundle.body(n)}"
              for n, f in zip(bundle.order, files, strict=True)]
    if bundle.aliases:  # served names imported under another name, right after the shim that defines them
        i = 2 + bundle.order.index(_SHIM)
        parts[i] += "\n\n" + "\n".join(f"{alias} = {name}" for alias, name in sorted(bundle.aliases.items()))
    return re.sub(r"\n{4,}", "\n\n\n", "\n\n\n".join(parts)) + "\n"


def write_remote_code(model, out_dir):
    """Write `configuration_<family>.py` and `modeling_<family>.py` into the saved HF folder `out_dir`
    and add their `auto_map` (and `torch_dtype`) to its config.json. Returns the file names (none for
    non-project models)."""
    family = family_of(model)
    if family is None:
        return []
    config_module = family.config_class.__module__
    names = {"config": f"configuration_{family.name}", "model": f"modeling_{family.name}"}
    config_src = generate(config_module, title=f"{family.config_class.__name__}: configuration of the "
                                                  f"{family.name} model family of babylm-ds.")
    model_module = family.auto_classes["AutoModelForCausalLM"].__module__
    model_src = generate(model_module, {config_module: "." + names["config"]},
                         title=f"The {family.name} model family of babylm-ds (torch + transformers only).")
    files = []
    for key, src in (("config", config_src), ("model", model_src)):
        path = os.path.join(out_dir, names[key] + ".py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(src)
        files.append(os.path.basename(path))
    config_path = os.path.join(out_dir, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["auto_map"] = {"AutoConfig": f"{names['config']}.{family.config_class.__name__}",
                          **{auto: f"{names['model']}.{cls.__name__}" for auto, cls in family.auto_classes.items()}}
    if "dtype" in config:  # transformers < 4.56 reads the weights' dtype from `torch_dtype` (5.x drops it on load)
        config["torch_dtype"] = config["dtype"]
    atomic_write_json(config_path, config)
    return files


def save_tokenizer(tokenizer, out_dir):
    """Save `with_bos(tokenizer)` into `out_dir` with a tokenizer_config.json that transformers 4.x reads too:
    5.x's `TokenizersBackend` named as 4.x's `PreTrainedTokenizerFast` (an alias of it in 5.x), without the
    arguments of the call that loaded it (`local_files_only`, `is_local`), which 5.x writes back."""
    with_bos(tokenizer).save_pretrained(out_dir)
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("local_files_only", "is_local"):
        config.pop(key, None)
    atomic_write_json(path, config)


def with_bos(tokenizer):
    """A copy of `tokenizer` that prepends BOS when special tokens are asked for (`tokenizer(text)`'s
    default), so HF consumers that tokenize with the defaults (the BabyLM pipeline's causal scorer)
    condition on BOS as babylm-ds's scorer does. babylm-ds itself always passes `add_special_tokens=False`."""
    if tokenizer.bos_token is None or getattr(tokenizer, "add_bos_token", None) is None:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_bos_token = True  # transformers rebuilds the post-processor; saved in tokenizer.json
    return tokenizer

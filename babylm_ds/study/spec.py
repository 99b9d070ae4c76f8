"""A study spec (YAML or JSON): data, shared training settings, architectures with their learning-rate
sweeps, seeds, students with their teachers, evaluation. `load_spec` fills defaults and refuses bad
specs with one line naming the file and the key; `sweep_runs` lists the pretraining runs it plans.

    data:           {max_words: 1000000, vocab_size: 16000, seq_len: 128}   or   {dir: PREPARED_DIR}
    training:       {epochs: 2, micro_batch: 16, warmup_steps: 50, ...}     every run's settings but the lr
    architectures:  {hgrn2: {model: babyhgrn-cpu, lrs: [1e-3, 3e-3], config: {KEY: VALUE}, training: {...}}, ...}
    seeds:          [0]
    students:       {hgrn2-kd: {arch: hgrn2, teachers: [hgrn2], alpha: 0.5, temperature: 2.0, k: 64}}
    evaluation:     {tasks: blimp,supplement,ewok,bear_lite, final_limit: null, bear_limit: null, ...,
                     finetune: {tasks: rte,wsc, max_train: null, epochs: null, ..., models: [NAME, ...]}}

Every key is a field of the configuration tree (`babylm_ds.config`; `SECTIONS` and `STRUCTURE` map them),
with the tree's defaults: `data` the data fields, `training` the optimisation and run fields and the
dev-loss settings, `evaluation` the zero-shot ones, a student's keys the distillation and cache fields,
`evaluation.finetune` the fine-tuning ones (absent, null or `tasks: null`: no fine-tuning; `models`: which
architectures and students are fine-tuned, default all).
An architecture's `training` overrides the shared section for its runs and its students (e.g. max_steps).
A student trains the preset of `arch` at that architecture's selected lr, for the same steps and seeds,
from the cached logits of the selected runs of `teachers` (several: an ensemble); its no-KD twin is the
selected run of `arch` itself.
"""
import json
import os
from dataclasses import dataclass, field

from babylm_ds.config import FIELDS, check_value


def _paths(*items, skip=()):
    """{spec key: tree path} of every field of the sections/paths in `items` but `skip`."""
    paths = [p for item in items for p in FIELDS if p == item or p.startswith(item + ".")]
    return {p.split(".")[1]: p for p in paths if p not in skip}


# {spec section: {key: tree path}}
SECTIONS = {
    "data": _paths("data"),
    "training": _paths("optim", "run", "evaluation.eval_every", "evaluation.dev_max_seqs",
                       skip=("optim.lr", "run.out", "run.resume", "run.force", "run.seed", "run.local_rank",
                             "run.threads")),
    "evaluation": _paths("evaluation", skip=("evaluation.eval_every", "evaluation.dev_max_seqs")),
    "students": _paths("distill", "cache", skip=("distill.preset", "distill.teacher_cache", "distill.teachers",
                                                 "distill.beta", "distill.layer_map")),
    "finetune": _paths("finetune"),  # the keys of evaluation.finetune
}
# The spec's own structure: what each of its other keys sets in a run's configuration.
STRUCTURE = {"architectures.*.model": "model.name", "architectures.*.lrs": "optim.lr (one run each)",
             "architectures.*.config": "model.config", "architectures.*.training": "the training section's fields",
             "seeds": "run.seed (one run each)", "students.*.arch": "model.name (the architecture's)",
             "students.*.teachers": "distill.teacher_cache (their selected runs' cached logits)",
             "evaluation.finetune": "the finetune section's fields (a fine-tuning stage per final model)",
             "evaluation.finetune.models": "the final models fine-tuned (architecture and student names; default all)"}
DEFAULTS = {section: {key: FIELDS[path].default for key, path in keys.items()}
            for section, keys in SECTIONS.items() if section != "students"}
DEFAULTS["evaluation"]["finetune"] = None
DEFAULTS["finetune"]["models"] = None
STUDENT_DEFAULTS = {"arch": None, "teachers": None, **{k: FIELDS[p].default for k, p in SECTIONS["students"].items()}}
ARCH_KEYS = {"model", "lrs", "config", "training"}


class SpecError(ValueError):
    """A bad spec (one line: file, key, what to write instead)."""


@dataclass(frozen=True)
class Run:
    """One training job: a pretraining run of an architecture at one lr and seed, or a student."""
    name: str
    arch: str
    model: str
    lr: float
    seed: int
    config: dict = field(default_factory=dict, hash=False)
    student: str | None = None  # name of the students entry for a distillation run
    training: dict = field(default_factory=dict, hash=False)  # the architecture's training overrides


def _read(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the study spec ({e.strerror})") from None
    try:
        if path.endswith(".json"):
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as e:  # yaml/json parser errors carry the line and column
        raise SpecError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                        f"{' '.join(str(e).split())}") from None


def _merge(path, where, given, defaults, keys):
    """`given` (a mapping of the spec at `where`) over `defaults`, each value checked against its field."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise SpecError(f"{path}: '{where}' must be a mapping")
    if unknown := sorted(set(given) - set(defaults)):
        raise SpecError(f"{path}: unknown key(s) {unknown} in '{where}'; known: {sorted(defaults)}")
    for key, value in given.items():
        if key in keys:
            try:
                check_value(keys[key], value)
            except ValueError as e:
                raise SpecError(f"{path}: {where}.{key} {e}") from None
    return {**defaults, **given}


def _number(path, where, value, positive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
        raise SpecError(f"{path}: {where} must be a {'positive ' if positive else ''}number, got {value!r}")
    return value


def load_spec(path):
    """The validated spec of file `path` (YAML, or JSON by its .json ending) with defaults filled in."""
    return check_spec(_read(path), path)


def check_spec(raw, path):
    """The validated spec of the mapping `raw` read from `path` (named in errors), with defaults filled in."""
    from babylm_ds.models.zoo import PRESETS

    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a mapping with 'architectures' (and data, training, ...)")
    known = {"name", "data", "training", "architectures", "seeds", "students", "evaluation"}
    if unknown := sorted(set(raw) - known):
        raise SpecError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    spec = {"name": raw.get("name") or os.path.splitext(os.path.basename(path))[0]}
    for section in ("data", "training", "evaluation"):
        spec[section] = _merge(path, section, raw.get(section), DEFAULTS[section], SECTIONS[section])
    _number(path, "training.epochs", spec["training"]["epochs"])
    archs = raw.get("architectures")
    if not isinstance(archs, dict) or not archs:
        raise SpecError(f"{path}: 'architectures' must map names to {{model: PRESET, lrs: [...]}}")
    spec["architectures"] = {}
    for name, arch in archs.items():
        if not isinstance(arch, dict) or (unknown := sorted(set(arch) - ARCH_KEYS)) or "model" not in arch:
            raise SpecError(f"{path}: architectures.{name} must be {{model: PRESET, lrs: [...], config: {{...}}, "
                            "training: {...}}" + (f" (unknown key(s) {unknown})" if isinstance(arch, dict) and unknown
                                                  else ""))
        if arch["model"] not in PRESETS and not os.path.isdir(arch["model"]):
            raise SpecError(f"{path}: architectures.{name}.model {arch['model']!r} is not a preset "
                            f"({', '.join(PRESETS)})")
        lrs = arch.get("lrs")
        if not isinstance(lrs, list) or not lrs:
            raise SpecError(f"{path}: architectures.{name}.lrs must be a non-empty list of learning rates")
        for lr in lrs:
            _number(path, f"architectures.{name}.lrs", lr)
        training = _merge(path, f"architectures.{name}.training", arch.get("training"), DEFAULTS["training"],
                          SECTIONS["training"])
        spec["architectures"][name] = {"model": arch["model"], "lrs": [float(x) for x in lrs],
                                       "config": dict(arch.get("config") or {}),
                                       "training": {k: v for k, v in training.items()
                                                    if k in (arch.get("training") or {})}}
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise SpecError(f"{path}: 'seeds' must be a non-empty list of integers")
    spec["seeds"] = seeds
    _check_evaluation(path, spec["evaluation"])
    spec["students"] = {}
    for name, student in (raw.get("students") or {}).items():
        student = _merge(path, f"students.{name}", student, STUDENT_DEFAULTS, SECTIONS["students"])
        if student["arch"] not in spec["architectures"]:
            raise SpecError(f"{path}: students.{name}.arch must name an architecture of this spec "
                            f"({', '.join(spec['architectures'])})")
        teachers = student["teachers"]
        if not isinstance(teachers, list) or not teachers or any(t not in spec["architectures"] for t in teachers):
            raise SpecError(f"{path}: students.{name}.teachers must list architectures of this spec "
                            f"({', '.join(spec['architectures'])})")
        if name in spec["architectures"]:
            raise SpecError(f"{path}: student {name!r} has the name of an architecture; rename it")
        spec["students"][name] = student
    spec["evaluation"]["finetune"] = _finetune(path, spec, raw["evaluation"].get("finetune")
                                               if isinstance(raw.get("evaluation"), dict) else None)
    return spec


def _check_evaluation(path, e):
    from babylm_ds.evaluation.bear import TASKS as BEAR
    from babylm_ds.evaluation.data import BENCHMARKS

    for key, known in (("tasks", BENCHMARKS + BEAR), ("epoch_tasks", BENCHMARKS)):  # BEAR: final evaluation only
        tasks = [t for t in (e[key] or "").split(",") if t]
        if (bad := [t for t in tasks if t.partition("/")[0] not in known]) or key == "tasks" and not tasks:
            raise SpecError(f"{path}: evaluation.{key} {e[key]!r} names unknown task(s) {bad}; a comma list of "
                            f"{', '.join(known)}")
    for key in ("epoch_limit", "final_limit", "bear_limit", "bootstrap"):
        if e[key] is not None and e[key] < 1:
            raise SpecError(f"{path}: evaluation.{key} must be >= 1, got {e[key]}")


def _finetune(path, spec, given):
    """evaluation.finetune checked (fields of the tree's finetune section, `models` named in the spec), or None."""
    from babylm_ds.config import Config, updated
    from babylm_ds.evaluation.glue import check_settings

    if given is None:
        return None
    ft = _merge(path, "evaluation.finetune", given, DEFAULTS["finetune"], SECTIONS["finetune"])
    if ft["tasks"] is None:
        return None
    try:
        check_settings(updated(Config(), {SECTIONS["finetune"][k]: v for k, v in ft.items() if k != "models"}).finetune,
                       lambda key: f"evaluation.finetune.{key}")
    except ValueError as e:
        raise SpecError(f"{path}: {e}") from None
    names = [*spec["architectures"], *spec["students"]]
    if ft["models"] is not None and (not isinstance(ft["models"], list) or not ft["models"]
                                     or any(m not in names for m in ft["models"])):
        raise SpecError(f"{path}: evaluation.finetune.models must list architectures or students of this spec "
                        f"({', '.join(names)}), got {ft['models']!r}")
    if ft["data_dir"]:
        ft["data_dir"] = os.path.abspath(ft["data_dir"])
    return ft


def run_name(arch, lr, seed):
    return f"{arch}-lr{lr:g}-s{seed}"


def sweep_runs(spec):
    """The pretraining runs: every architecture x learning rate x seed."""
    return [Run(run_name(arch, lr, seed), arch, a["model"], lr, seed, a["config"], training=a["training"])
            for arch, a in spec["architectures"].items() for lr in a["lrs"] for seed in spec["seeds"]]


def student_runs(spec, best_lr):
    """The distillation runs, given the selected lr of every architecture."""
    archs = spec["architectures"]
    return [Run(f"{name}-s{seed}", s["arch"], archs[s["arch"]]["model"], best_lr[s["arch"]], seed,
                archs[s["arch"]]["config"], student=name, training=archs[s["arch"]]["training"])
            for name, s in spec["students"].items() for seed in spec["seeds"]]


def run_values(spec, run):
    """{tree path: value} of a run's configuration that the spec decides (the study adds paths and ids)."""
    values = {SECTIONS["data"][k]: v for k, v in spec["data"].items()}
    values.update({SECTIONS["training"][k]: v for k, v in {**spec["training"], **run.training}.items()})
    values.update({SECTIONS["evaluation"][k]: v for k, v in spec["evaluation"].items() if k != "finetune"})
    values.update({SECTIONS["finetune"][k]: v for k, v in (spec["evaluation"]["finetune"] or {}).items()
                   if k != "models"})
    values.update({"model.name": run.model, "model.config": run.config, "optim.lr": run.lr, "run.seed": run.seed})
    if run.student:
        s = spec["students"][run.student]
        values.update({SECTIONS["students"][k]: v for k, v in s.items() if k in SECTIONS["students"]})
    return values

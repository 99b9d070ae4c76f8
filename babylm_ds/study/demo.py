"""The demo (`launchers/pipeline.py`, `make demo`): the study of studies/demo.yaml, its settings as flags.

Each flag sets one field of the demo's runs (`FLAGS`: flag -> "[scope:]section.name", scope = which
runs: the teacher architectures or the student's); `demo_spec` applies the given ones to the spec.
"""
import argparse
import os

from babylm_ds.config import FIELDS, add_field
from babylm_ds.study.runner import PHASES
from babylm_ds.study.spec import SECTIONS, check_spec

DEMO_SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "studies",
                         "demo.yaml")
FLAGS = {
    "--out": "run.out", "--corpus": "data.corpus", "--max-words": "data.max_words", "--vocab-size": "data.vocab_size",
    "--seq-len": "data.seq_len", "--steps": "student:optim.max_steps", "--teacher-steps": "teachers:optim.max_steps",
    "--micro-batch": "optim.micro_batch", "--lr": "optim.lr", "--teachers": "teachers:model.name",
    "--student": "student:model.name", "--k": "cache.k", "--alpha": "distill.alpha",
    "--temperature": "distill.temperature", "--ds-config": "run.ds_config", "--world-size": "run.world_size",
    "--launcher": "run.launcher", "--eval-limit": "evaluation.final_limit", "--full-eval": "all:evaluation.final_limit",
    "--eval-tasks": "evaluation.tasks", "--bear-limit": "evaluation.bear_limit", "--finetune-tasks": "finetune.tasks",
    "--seed": "run.seed", "--force": "run.force", "--threads": "run.threads",
}
SCOPES = {"student": "the student's runs (KD and no KD)", "teachers": "each teacher (one architecture per preset)",
          "all": "every item"}
STAGES = {**{p: p for p in PHASES}, "teachers": "train", "baseline": "train", "cache": "distill"}  # old names too


def _read_demo():
    import yaml

    with open(DEMO_SPEC) as f:
        return yaml.safe_load(f)


def build_parser():
    raw = _read_demo()
    p = argparse.ArgumentParser(prog="pipeline.py", description=__doc__ + "\nEvery flag defaults to studies/demo.yaml.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    kd = raw["students"]["student-kd"]
    shown = {**{f"data.{k}": v for k, v in raw["data"].items()}, **{f"evaluation.{k}": v for k, v in
                                                                       raw["evaluation"].items()},
             "optim.micro_batch": raw["training"]["micro_batch"], "optim.lr": raw["architectures"]["student"]["lrs"][0],
             "student:optim.max_steps": raw["architectures"]["student"]["training"]["max_steps"],
             "teachers:optim.max_steps": "2 x --steps", "teachers:model.name": raw["architectures"]["teacher"]["model"],
             "student:model.name": raw["architectures"]["student"]["model"], "cache.k": kd["k"],
             "finetune.tasks": f"{raw['evaluation']['finetune']['tasks']} on the students, "
                               + ", ".join(f"{k} {v}" for k, v in raw["evaluation"]["finetune"].items()
                                           if k not in ("tasks", "models")),
             "distill.alpha": kd["alpha"], "distill.temperature": kd["temperature"],
             **{f"run.{k}": raw["training"][k] for k in ("ds_config", "world_size", "launcher")}}
    for name, dest in FLAGS.items():
        scope, _, path = dest.rpartition(":")
        f = FIELDS[path]
        help_ = f.help + (f"; {SCOPES[scope]}" if scope else "") + (f" (demo: {shown[dest]})" if dest in shown else "")
        if scope == "all":
            p.add_argument(name, dest=dest, action="store_const", const=None, default=argparse.SUPPRESS,
                           help="final evaluation on every item (overrides --eval-limit)")
        else:
            add_field(p, f, [name], dest=dest, default=argparse.SUPPRESS, help=help_.replace("%", "%%"),
                      **({"nargs": "+"} if dest == "teachers:model.name" else {}))
    p.add_argument("--stages", default=",".join(PHASES), help=f"comma list of the stages to run, of {','.join(PHASES)} "
                   "(also the old names teachers, baseline: train; cache: distill)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    p.add_argument("--print-config", action="store_true", help="print the demo's spec with these flags and exit")
    return p


def parse_args(argv=None):
    """({flag dest: value} of the given flags, phases to run, the namespace)."""
    p = build_parser()
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    if bad := [s for s in stages if s not in STAGES]:
        p.error(f"unknown stage(s) {bad}; choose from {','.join(PHASES)}")
    phases = [x for x in PHASES if x in {STAGES[s] for s in stages}]
    values = {k: v for k, v in vars(args).items() if k in FLAGS.values()}
    positive = ("student:optim.max_steps", "teachers:optim.max_steps", "run.world_size", "data.max_words")
    if any(values.get(k) is not None and values[k] < 1 for k in positive):
        p.error("--steps, --teacher-steps, --world-size and --max-words must be >= 1")
    return values, phases, args


def demo_spec(values):
    """The demo's spec (checked, defaults filled in) with the flags' `values` ({dest: value}) applied."""
    raw = _read_demo()
    archs, kd = raw["architectures"], raw["students"]["student-kd"]
    if "teachers:model.name" in values:
        template, presets = archs.pop("teacher"), values["teachers:model.name"]
        names = ["teacher"] if len(presets) == 1 else [f"teacher-{p}" for p in presets]
        raw["architectures"] = archs = {**{n: {**template, "model": p, "training": dict(template["training"])}
                                           for n, p in zip(names, presets, strict=True)}, **archs}
        kd["teachers"] = names
    steps = values.get("student:optim.max_steps")
    teacher_steps = values.get("teachers:optim.max_steps") or (2 * steps if steps else None)
    for name, n in [(kd["arch"], steps)] + [(t, teacher_steps) for t in kd["teachers"]]:
        if n:
            archs[name].setdefault("training", {})["max_steps"] = n
    if "student:model.name" in values:
        archs[kd["arch"]]["model"] = values["student:model.name"]
    where = {path: (section, key) for section, keys in SECTIONS.items() for key, path in keys.items()}
    for dest, value in values.items():
        scope, _, path = dest.rpartition(":")
        if path == "optim.lr":
            for a in archs.values():
                a["lrs"] = [value]
        elif path == "run.seed":
            raw["seeds"] = [value]
        elif path.startswith("finetune."):
            raw["evaluation"]["finetune"] = {**(raw["evaluation"].get("finetune") or {}),
                                             path[len("finetune."):]: value}
        elif not scope and path in where:
            section, key = where[path]
            if path in ("run.ds_config", "data.corpus") and value:
                value = os.path.abspath(value)
            (kd if section == "students" else raw.setdefault(section, {}))[key] = value
    if "all:evaluation.final_limit" in values:
        raw["evaluation"]["final_limit"] = None
    return check_spec(raw, DEMO_SPEC)

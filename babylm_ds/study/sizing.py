"""Size a study to a time budget from a measured warm-up (the first GPU learning run, scripts/gpu_learn.sh).

A study in two phases: (1) every architecture trained and evaluated, (2) a student distilled from the
better of them (lowest final dev loss) and evaluated. `size` measures, in this process and with the spec's
own settings (DeepSpeed config, micro batch, bf16), a few training steps and teacher forwards of each
architecture and the zero-shot scoring rate, then gives every run the largest whole number of epochs
(a fraction when not even one fits) whose predicted time fits both phases' budgets:

    phase 1 = start + sum over archs of [job + E (S step + epoch eval) + job + final eval]
    phase 2 = start + job + cache + job + E (S step_kd + epoch eval) + job + final eval

with S an architecture's optimizer steps per epoch, `start` the measured start-up (imports) of a process (here:
the study's own), `job` = start + JOB_S, cache = one teacher forward per batch of the student's cache batch size
(cache.batch_size) over the train split.
Budgets are scaled by SAFETY first.

    python -m babylm_ds.study.sizing prepare SPEC --study-dir DIR [--tiny]   # DIR/base.json + the data
    python -m babylm_ds.study.sizing size DIR --phase1 S --phase2 S --report sizing.json  # DIR/phase1.json
    babylm-ds study DIR/phase1.json --out DIR
    python -m babylm_ds.study.sizing student DIR    # DIR/phase2.json: the student of the better teacher
    babylm-ds study DIR/phase2.json --out DIR       # phase 1's runs and evaluations are skipped
    python -m babylm_ds.study.sizing collect DIR OUT   # study.{json,md,png} and runs.json, as far as done
"""
import argparse
import glob
import json
import math
import os
import shutil
import sys
import time

from babylm_ds.utils.io import atomic_write_json

SAFETY = 0.8  # planned time / budget: the measured warm-up misses launch noise and the last evaluations
JOB_S = 10.0  # per job beyond its imports: model build, DeepSpeed init, export, checkpoint (estimate)
KD_COST = 1.15  # a distillation step / a plain step (the KL over the cached top-k; estimate)
CACHE_COST = 2.0  # fp32 teacher (the cache's default) vs the timed bf16 forward, top-k and writes (estimate)
MAX_EPOCHS = 20
# --tiny: the same phases and code at CPU test size (tests, `gpu_learn.sh --tiny`)
TINY = {"data": {"max_words": 8000, "vocab_size": 500, "seq_len": 64},
        "training": {"micro_batch": 8, "warmup_steps": 2, "bf16": False, "dev_max_seqs": 16},
        "config": {"hgrn2": {"hidden_size": 32, "num_hidden_layers": 2, "expand_ratio": 16, "intermediate_size": 64},
                   "llama": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "intermediate_size": 64}},
        "evaluation": {"epoch_limit": 1, "final_limit": 2, "bootstrap": 50}}


def tiny(spec):
    """The spec at CPU test size: small data, 2-layer width-32 models, fp32, a few items per paradigm."""
    spec = json.loads(json.dumps(spec))
    for section in ("data", "training", "evaluation"):
        spec[section].update(TINY[section])
    for name, arch in spec["architectures"].items():
        arch["config"].update(TINY["config"].get(name, {}))
    for student in spec["students"].values():
        student["k"] = min(student["k"], 8)
    return spec


def epochs_that_fit(cost, budgets, max_epochs=MAX_EPOCHS):
    """The largest whole number of epochs E <= max_epochs with cost(E) = [seconds of each phase] within
    SAFETY x budgets, or the largest fraction of one (to 0.05) when E = 1 does not fit; None if no
    training fits at all. `cost` must be non-decreasing in E."""
    fits = lambda e: all(c <= SAFETY * b for c, b in zip(cost(e), budgets, strict=True))  # noqa: E731
    if fits(1):
        return max(e for e in range(1, max_epochs + 1) if fits(e))
    fractions = [f / 20 for f in range(19, 0, -1) if fits(f / 20)]
    return fractions[0] if fractions else None


def phase_costs(m, n_train):
    """cost(E) -> [phase 1 s, phase 2 s] from the warm-up measurements `m` (see `measure`)."""
    archs, job, ev = m["archs"], m["job_s"], m["eval"]
    student = archs[m["student_arch"]]

    def train(a, epochs, factor=1.0):
        return job + epochs * (a["steps_per_epoch"] * a["step_s"] * factor + ev["epoch_texts"] * a["text_s"])

    def final(a):
        return job + ev["final_texts"] * a["text_s"] + ev["dev_batches"] * a["fwd_s"]

    cache = job + max(a["fwd_s"] for a in archs.values()) * CACHE_COST * math.ceil(n_train / m["cache_batch"])
    return lambda e: [m["imports_s"] + sum(train(a, e) + final(a) for a in archs.values()),
                      m["imports_s"] + cache + train(student, e, KD_COST) + final(student)]


def _timed(fn, n, sync):
    fn()
    fn()  # compilation and autotuning happen in the first calls
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n


def measure(study, steps=5):
    """Warm-up of `study` (a runner.Study): per architecture, seconds of a training step (the Trainer's own
    engine and micro-steps, with the configuration of the architecture's first run), of a no-grad forward
    of one teacher-cache batch, and of scoring one zero-shot text; the optimizer steps of an epoch; the
    zero-shot text counts of an epoch-end and a final evaluation; the start-up seconds of a job process
    (this one's imports)."""
    import torch

    from babylm_ds.data import PackedDataset, load_meta, load_tokenizer
    from babylm_ds.evaluation.data import load_tasks
    from babylm_ds.evaluation.zeroshot import score_texts
    from babylm_ds.models import model_from_arg
    from babylm_ds.study.spec import sweep_runs
    from babylm_ds.training.trainer import Trainer, collate

    imports_s = time.time() - _process_start()
    spec, e = study.spec, study.spec["evaluation"]
    meta, tokenizer = load_meta(study.data), load_tokenizer(study.data)
    train, dev = PackedDataset(study.data, "train"), PackedDataset(study.data, "dev")
    cache_batch = next(iter(spec["students"].values()))["batch_size"]

    def texts(tasks, limit):
        keys = {k for ps in (load_tasks(tasks, limit).values() if tasks else ()) for pairs in ps.values()
                for item in pairs for k in (item[:2], item[2:])}
        return sorted(keys)

    probe = texts(e["tasks"], 3)
    out = {"imports_s": imports_s, "job_s": imports_s + JOB_S, "cache_batch": cache_batch, "archs": {},
           "eval": {"epoch_texts": len(texts(e["epoch_tasks"], e["epoch_limit"])),
                    "final_texts": len(texts(e["tasks"], e["final_limit"])),
                    "dev_batches": math.ceil(len(dev) / cache_batch)}}
    for name in spec["architectures"]:
        run = next(r for r in sweep_runs(spec) if r.arch == name)
        cfg = study.config(run)
        torch.manual_seed(0)
        model = model_from_arg(cfg.model.name, meta["vocab_size"], cfg.model.config)
        trainer = Trainer(cfg, model, train, dev, tokenizer, callbacks=[])
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        text_s = _timed(lambda: score_texts(model.to(device), tokenizer, probe, device=device), 1, sync) / len(probe)
        trainer._initialize()  # the run's DeepSpeed engine, optimizer and schedule
        batches = [collate([train[i] for i in range(trainer.micro)])] * trainer.accum
        ids = collate([train[i % len(train)] for i in range(cache_batch)])["input_ids"].to(trainer.engine.device)

        def forward():
            with torch.no_grad():
                trainer.engine(input_ids=ids)

        step_s = _timed(lambda: trainer._micro_steps(batches), steps, sync)
        fwd_s = _timed(forward, steps, sync)
        out["archs"][name] = {"steps_per_epoch": study.steps(run)[0], "step_s": step_s, "fwd_s": fwd_s,
                              "text_s": text_s}
        print(f"warm-up {name}: step {1e3 * step_s:.1f} ms, forward {1e3 * fwd_s:.1f} ms, "
              f"zero-shot {1e3 * text_s:.3f} ms/text", flush=True)
        trainer = model = None  # free them before the next architecture
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _process_start():
    import psutil

    return psutil.Process().create_time()


def size(study_dir, budgets, report=None, max_epochs=MAX_EPOCHS):
    """Measure, choose the epochs, write DIR/phase1.json (no students) and DIR/sizing.json; returns the plan."""
    from babylm_ds.data import load_meta
    from babylm_ds.study.runner import Study

    with open(os.path.join(study_dir, "base.json")) as f:
        spec = json.load(f)
    study = Study(spec, study_dir)
    n_train = load_meta(study.data)["splits"]["train"]["num_sequences"]
    m = measure(study)
    m["student_arch"] = next(iter(spec["students"].values()))["arch"]
    cost = phase_costs(m, n_train)
    epochs = epochs_that_fit(cost, budgets, max_epochs)
    per_epoch = {name: a["steps_per_epoch"] for name, a in m["archs"].items()}
    plan = {"budgets_s": budgets, "safety": SAFETY, "steps_per_epoch": per_epoch, "epochs": epochs,
            "predicted_s": cost(epochs) if epochs else None, "warmup": m}
    atomic_write_json(os.path.join(study_dir, "sizing.json"), plan)
    if report:
        atomic_write_json(report, plan)
    if epochs is None:
        raise SystemExit(f"sizing: not even 0.05 epoch fits the budgets {budgets} s (one epoch: {cost(1)} s)")
    spec["training"]["epochs"] = epochs
    atomic_write_json(os.path.join(study_dir, "sized.json"), spec)
    atomic_write_json(os.path.join(study_dir, "phase1.json"), {**spec, "students": {}})
    steps = ", ".join(f"{name} {n}" for name, n in per_epoch.items())
    print(f"sizing: {epochs:g} epoch(s) of {steps} steps; predicted {', '.join(f'{c:.0f}' for c in cost(epochs))} s "
          f"of budgets {', '.join(f'{b:.0f}' for b in budgets)} s", flush=True)
    return plan


def better_teacher(study_json):
    """The architecture with the lowest final dev loss in a study's study.json."""
    with open(study_json) as f:
        final = json.load(f)["final"]
    return min(final, key=lambda arch: final[arch]["dev_loss"]["value"])


def student(study_dir):
    """DIR/phase2.json: the sized spec with every student taught by the better architecture of phase 1."""
    with open(os.path.join(study_dir, "sized.json")) as f:
        spec = json.load(f)
    teacher = better_teacher(os.path.join(study_dir, "study.json"))
    for s in spec["students"].values():
        s["teachers"] = [teacher]
    atomic_write_json(os.path.join(study_dir, "phase2.json"), spec)
    print(f"student(s) {', '.join(spec['students'])} distilled from {teacher} (lower final dev loss)", flush=True)
    return teacher


def prepare(spec_path, study_dir, is_tiny=False):
    """DIR/base.json (the spec, at test size with --tiny) and the study's prepared data."""
    from babylm_ds.study.runner import Study
    from babylm_ds.study.spec import check_spec, load_spec

    spec = load_spec(spec_path)
    spec = check_spec(tiny(spec), spec_path) if is_tiny else spec
    if len(spec["students"]) != 1:
        raise SystemExit(f"{spec_path}: a sized study has one student (its teacher is chosen after phase 1)")
    os.makedirs(study_dir, exist_ok=True)
    atomic_write_json(os.path.join(study_dir, "base.json"), spec)
    Study(spec, study_dir).prepare()


def collect(study_dir, out):
    """Copy the study's report (study.{json,md,png}, once a phase has written it) to `out`, and write
    out/runs.json: every run's summary, final evaluation and the tail of its job logs, as far as they got."""
    for ext in ("json", "md", "png"):
        path = os.path.join(study_dir, f"study.{ext}")
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(out, f"study.{ext}"))
    runs = {}
    for log in sorted(glob.glob(os.path.join(study_dir, "logs", "*.log"))):
        name = os.path.basename(log)[:-4]
        with open(log, errors="replace") as f:
            runs.setdefault(name, {})["log_tail"] = f.read()[-3000:]
        for key, path in (("summary", os.path.join(study_dir, "runs", name, "summary.json")),
                          ("eval", os.path.join(study_dir, "eval", name.removeprefix("eval-") + ".json"))):
            if os.path.isfile(path) and (key == "summary") != name.startswith("eval-"):
                with open(path) as f:
                    runs[name][key] = json.load(f)
    atomic_write_json(os.path.join(out, "runs.json"), runs)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m babylm_ds.study.sizing", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="write DIR/spec.json and prepare the study's data")
    a.add_argument("spec")
    a.add_argument("--study-dir", required=True)
    a.add_argument("--tiny", action="store_true", help="CPU test size (see TINY)")
    a = sub.add_parser("size", help="warm-up, then DIR/phase1.json with the epochs that fit")
    a.add_argument("study_dir")
    a.add_argument("--phase1", type=float, required=True, help="seconds for phase 1 (every architecture)")
    a.add_argument("--phase2", type=float, required=True, help="seconds for phase 2 (cache, student)")
    a.add_argument("--report", default=None, help="also write the plan and the measurements here (JSON)")
    a.add_argument("--max-epochs", type=int, default=MAX_EPOCHS)
    a = sub.add_parser("student", help="DIR/phase2.json: the student of phase 1's better architecture")
    a.add_argument("study_dir")
    a = sub.add_parser("collect", help="copy the report and write OUT/runs.json, as far as the study got")
    a.add_argument("study_dir")
    a.add_argument("out")
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.spec, args.study_dir, args.tiny)
    elif args.cmd == "size":
        size(args.study_dir, [args.phase1, args.phase2], args.report, args.max_epochs)
    elif args.cmd == "student":
        student(args.study_dir)
    else:
        collect(args.study_dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

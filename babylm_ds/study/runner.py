"""Run a study: prepare the data, train every architecture at every lr and seed (dev loss, and zero-shot
evaluation when asked, at each epoch end), select each architecture's lr on dev loss, distil the students
from the selected teachers, evaluate the selected runs and the students (zero-shot, BEAR, and fine-tuning
when `evaluation.finetune` asks), write the report.

The study is the project's one orchestrator: `babylm-ds study SPEC` and the demo (`launchers/pipeline.py`,
`make demo`: studies/demo.yaml) both run it. Every run is a launcher job (DeepSpeed by default) in its own
process: one per GPU group when several are free, one at a time on CPU; its command line is derived from
the run's configuration (`babylm_ds.config.to_argv`). Re-running resumes: finished runs are skipped, killed
runs continue from their last checkpoint, runs whose command changed are redone (stamps in OUT/stages, see
training.jobs). A study runs in phases (PHASES); a later phase alone reads what the earlier ones left.
"""
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from babylm_ds.config import Config, to_argv, updated
from babylm_ds.study.spec import run_values, student_runs, sweep_runs
from babylm_ds.training.jobs import ROOT, JobError, job_env, launch_cmd, run_cmd, run_stage, verify_run
from babylm_ds.utils.io import atomic_write_json, sha256_file

PHASES = ("prepare", "train", "distill", "eval", "report")


def select_lr(spec, dev_loss):
    """{arch: lr with the lowest final dev loss, averaged over seeds}; `dev_loss`: {run name: loss}.

    Selection never looks at the zero-shot benchmarks that the study reports."""
    best = {}
    for arch, a in spec["architectures"].items():
        runs = [r for r in sweep_runs(spec) if r.arch == arch]
        mean = {lr: sum(dev_loss[r.name] for r in runs if r.lr == lr) / len(spec["seeds"]) for lr in a["lrs"]}
        finite = {lr: v for lr, v in mean.items() if math.isfinite(v)}
        if not finite:
            raise JobError(f"every learning rate of architecture {arch!r} diverged (dev loss {mean}); lower them")
        best[arch] = min(finite, key=finite.get)
    return best


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise JobError(f"{path} is missing; run the earlier stages first ({what})") from None


class Study:
    """`spec` (a loaded spec) run into `out`; `show`: relay each job's output to the terminal (without noise)."""

    def __init__(self, spec, out, force=False, threads=None, show=False):
        import torch

        self.spec, self.out, self.force, self.show = spec, os.path.abspath(out), force, show
        d = spec["data"]
        self.data = os.path.abspath(d["dir"]) if d["dir"] else os.path.join(self.out, "data")
        t = spec["training"]
        self.gpus = torch.cuda.device_count()
        self.world = 1 if t["launcher"] == "python" else min(t["world_size"], self.gpus or t["world_size"])
        self.slots = max(1, self.gpus // self.world) if self.gpus else 1
        cpus = os.cpu_count() or 1
        self.threads = threads or (max(1, cpus // self.world) if not self.gpus else 1)  # per rank of a job
        self.threads_one = threads or (cpus if not self.gpus else 1)  # of a one-process job (prepare, eval)
        self.lock = threading.Lock()
        self.times = {}

    # --- paths and configurations ------------------------------------------------------------
    def run_dir(self, run):
        return os.path.join(self.out, "runs", run.name)

    def stamp(self, name):
        return os.path.join(self.out, "stages", f"{name}.json")

    def log(self, name):
        return os.path.join(self.out, "logs", f"{name}.log")

    def config(self, run, **values):
        """The Config of `run` (a spec Run), with `values` ({tree path: value}) on top."""
        cfg = updated(Config(), {**run_values(self.spec, run), "data.dir": self.data, "run.out": self.run_dir(run),
                                 **values})
        if cfg.run.ds_config and not os.path.isabs(cfg.run.ds_config):  # spec paths are relative to the checkout
            cfg = updated(cfg, {"run.ds_config": os.path.join(ROOT, cfg.run.ds_config)})
        return cfg

    def steps(self, run):
        """(optimizer steps per epoch, steps) of `run`: max_steps, else `epochs` passes over the train split."""
        from babylm_ds.data import load_meta
        from babylm_ds.training.config import resolve

        o = resolve(self.config(run)).optim
        n = load_meta(self.data)["splits"]["train"]["num_sequences"]
        per_epoch = n // (o.micro_batch * self.world * o.grad_accum)
        if per_epoch < 1:
            raise JobError(f"{n} training sequences are fewer than one global batch; lower training.micro_batch")
        return per_epoch, o.max_steps or math.ceil(o.epochs * per_epoch)

    # --- jobs ----------------------------------------------------------------------------------
    def _call(self, name, cmd, slot, threads=None):
        device = None
        if self.gpus:
            device = ",".join(str(slot * self.world + i) for i in range(self.world))
        run_cmd(cmd, job_env(threads or self.threads, device), self.log(name), show=self.show)

    def _stage(self, name, spec, outputs, verify, run):
        seconds = run_stage(self.stamp(name), spec, outputs, verify, run, self.force)
        if seconds is not None:
            self.times[name] = seconds
        return seconds

    def _pool(self, fn, items):
        """fn(item, slot) over items, `self.slots` at a time (one per GPU group; one on CPU)."""
        free = list(range(self.slots))

        def task(item):
            with self.lock:
                slot = free.pop()
            try:
                return fn(item, slot)
            finally:
                with self.lock:
                    free.append(slot)

        with ThreadPoolExecutor(self.slots) as pool:
            return list(pool.map(task, items))

    def _inputs(self, *manifests):
        """Identity of a stage's inputs: the data fingerprint plus sha256 of the given manifests."""
        from babylm_ds.data import load_meta

        try:
            return [load_meta(self.data)["fingerprint"], *[sha256_file(p) for p in manifests]]
        except (OSError, ValueError) as e:
            raise JobError(f"an input of this stage is missing ({e}); run the earlier stages first") from None

    # --- stages --------------------------------------------------------------------------------
    def prepare(self):
        from babylm_ds.data import verify_data

        d = self.spec["data"]
        if d["dir"]:
            verify_data(self.data)
            return
        cfg = updated(Config(), {**{f"data.{k}": v for k, v in d.items()}, "data.dir": self.data, "run.force": True,
                                 "data.corpus": os.path.abspath(d["corpus"]) if d["corpus"] else None})
        argv = to_argv(cfg, "prepare")
        cmd = [sys.executable, "-m", "babylm_ds.cli", "prepare", *argv]
        self._stage("prepare", argv, [self.data], lambda: verify_data(self.data),
                    lambda resume: self._call("prepare", cmd, 0, self.threads_one))

    def train(self, run, slot, teacher_cache=None):
        """Train `run` (a sweep run, or a student from `teacher_cache`); returns its summary."""
        cfg = self.config(run, **({"distill.teacher_cache": teacher_cache} if teacher_cache else {}))
        script, command = ("distill.py", "distill") if teacher_cache else ("pretrain.py", "pretrain")
        _, steps = self.steps(run)
        run_dir, launcher = cfg.run.out, cfg.run.launcher
        argv = to_argv(updated(cfg, {"optim.max_steps": steps}), command)
        depends = [os.path.join(teacher_cache, "manifest.json")] if teacher_cache else []
        spec = [script, launcher, self.world, *argv, *self._inputs(*depends)]

        def go(resume):
            latest = os.path.join(run_dir, "checkpoints", "latest")
            more = ["--resume"] if resume and os.path.isfile(latest) else []
            self._call(run.name, launch_cmd(script, argv + more, self.world, launcher), slot)

        seconds = self._stage(run.name, spec, [run_dir], lambda: verify_run(run_dir, steps), go)
        summary = _read_json(os.path.join(run_dir, "summary.json"), f"run {run.name}")
        if seconds is not None:
            print(f"[{run.name}] done in {seconds:.0f}s: dev loss {summary['dev_loss']:.4f}", flush=True)
        return summary

    def teachers(self, run, best):
        """The final/ dirs of the selected runs of `run`'s student's teachers, for its seed."""
        s = self.spec["students"][run.student]
        return [os.path.join(self.run_dir(r), "final") for r in sweep_runs(self.spec)
                if r.arch in s["teachers"] and r.lr == best[r.arch] and r.seed == run.seed]

    def distil(self, run, slot, best):
        """Cache the selected teachers' logits for this student and seed, then train it from the cache."""
        finals, cache = self.teachers(run, best), os.path.join(self.out, "cache", run.name)
        cfg = self.config(run, **{"distill.teachers": finals, "run.out": cache})
        argv = to_argv(cfg, "cache_logits")
        spec = ["cache_logits.py", cfg.run.launcher, self.world, *argv,
                *self._inputs(*[os.path.join(f, "manifest.json") for f in finals])]

        def check():
            from babylm_ds.cache import verify

            if problems := verify(cache):
                raise ValueError(problems[0])

        self._stage(f"cache-{run.name}", spec, [cache], check,
                    lambda resume: self._call(f"cache-{run.name}", launch_cmd("cache_logits.py", argv, self.world,
                                                                              cfg.run.launcher), slot))
        return self.train(run, slot, teacher_cache=cache)

    def eval_prefix(self, run):
        return os.path.join(self.out, "eval", run.name)

    def evaluate(self, run, slot):
        """evaluation.tasks on every item of the final model (or evaluation.final_limit per paradigm), the
        dev perplexity, per-item results kept."""
        e = self.spec["evaluation"]
        final, prefix = os.path.join(self.run_dir(run), "final"), self.eval_prefix(run)
        argv = ["--model", final, "--out", prefix, "--name", run.name, "--tasks", e["tasks"], "--ppl-data", self.data,
                "--items", "--device", "cuda" if self.gpus else "cpu"]
        argv += ["--limit", str(e["final_limit"])] if e["final_limit"] else []
        argv += ["--bear-limit", str(e["bear_limit"])] if e["bear_limit"] and "bear" in e["tasks"] else []
        model_sha = self._inputs(os.path.join(final, "manifest.json"))[1]

        def check():
            with open(prefix + ".json") as f:
                result = json.load(f)[run.name]
            if result["model_manifest_sha256"] != model_sha or result["limit"] != e["final_limit"]:
                raise ValueError(f"{prefix}.json was made for another model or limit")

        cmd = [sys.executable, os.path.join(ROOT, "launchers", "evaluate.py"), *argv]
        self._stage(f"eval-{run.name}", [*argv, model_sha], [], check,
                    lambda resume: self._call(f"eval-{run.name}", cmd, slot, self.threads_one))
        return _read_json(prefix + ".json", f"evaluation of {run.name}")[run.name]

    def finetune_prefix(self, run):
        return os.path.join(self.out, "eval", f"{run.name}-finetune")

    def tuned(self, finals):
        """The final runs that evaluation.finetune fine-tunes (its `models`, default all)."""
        ft = self.spec["evaluation"]["finetune"]
        return [r for r in finals if ft and (ft["models"] is None or (r.student or r.arch) in ft["models"])]

    def finetune(self, run, slot):
        """evaluation.finetune's tasks, each on a fresh copy of the final model (`babylm-ds finetune`: one process),
        with the valid split's predictions kept; returns the result's {task: scores}."""
        final, prefix = os.path.join(self.run_dir(run), "final"), self.finetune_prefix(run)
        argv = ["--model", final, "--out", prefix, "--name", run.name, "--device", "cuda" if self.gpus else "cpu",
                *to_argv(self.config(run), "finetune")]
        model_sha = self._inputs(os.path.join(final, "manifest.json"))[1]
        tasks = self.spec["evaluation"]["finetune"]["tasks"].split(",")

        def check():
            with open(prefix + ".json") as f:
                result = json.load(f)
            if result["model_manifest_sha256"] != model_sha or sorted(result["tasks"]) != sorted(tasks):
                raise ValueError(f"{prefix}.json was made for another model or tasks")

        cmd = [sys.executable, "-m", "babylm_ds.cli", "finetune", *argv]
        self._stage(f"finetune-{run.name}", [*argv, model_sha], [], check,
                    lambda resume: self._call(f"finetune-{run.name}", cmd, slot, self.threads_one))
        return _read_json(prefix + ".json", f"fine-tuning of {run.name}")["tasks"]

    def params(self, run):
        """Parameter count of a run's exported model (built on the meta device)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        import babylm_ds.models  # noqa: F401  (registers the project's model types)
        from babylm_ds.models import count_parameters

        with torch.device("meta"):
            hf_config = AutoConfig.from_pretrained(os.path.join(self.run_dir(run), "final"))
            model = AutoModelForCausalLM.from_config(hf_config)
        return count_parameters(model)

    # --- the study -----------------------------------------------------------------------------
    def plan(self):
        """Human-readable plan: the sweep runs now, the students once the lrs are selected."""
        lines = [f"study {self.spec['name']}: out={self.out} data={self.data} "
                 f"{f'{self.gpus} GPU(s)' if self.gpus else 'CPU'}, {self.slots} run(s) at a time, "
                 f"{self.world} process(es) per run ({self.spec['training']['launcher']})"]
        lines += [f"  pretrain {r.name}: {r.model} lr={r.lr:g} seed={r.seed}"
                  + "".join(f" {k}={v}" for k, v in r.training.items()) for r in sweep_runs(self.spec)]
        for name, s in self.spec["students"].items():
            lines.append(f"  student {name}: {self.spec['architectures'][s['arch']]['model']} at the lr selected for "
                         f"{s['arch']}, from the selected run(s) of {'+'.join(s['teachers'])} (k={s['k']}, "
                         f"alpha={s['alpha']}, T={s['temperature']}); no-KD twin: the selected {s['arch']} run")
        e = self.spec["evaluation"]
        lines.append(f"  evaluate the selected runs and students: {e['tasks']}"
                     + (f"; fine-tune on {e['finetune']['tasks']} ({', '.join(e['finetune']['models'] or ['all'])})"
                        if e["finetune"] else ""))
        return "\n".join(lines)

    def run(self, phases=PHASES):
        """Run the selected `phases` (PHASES order); returns the report dict when 'report' is among them."""
        from babylm_ds.study import report

        t0 = time.time()
        print(self.plan(), flush=True)
        if "prepare" in phases:
            self.prepare()
        if not set(phases) - {"prepare"}:
            return None
        sweep = sweep_runs(self.spec)
        summaries = dict(zip([r.name for r in sweep], self._pool(self.train, sweep) if "train" in phases else
                             [_read_json(os.path.join(self.run_dir(r), "summary.json"), f"run {r.name}")
                              for r in sweep], strict=True))
        best = select_lr(self.spec, {name: s["dev_loss"] for name, s in summaries.items()})
        print("selected on dev loss: " + ", ".join(f"{a} lr={lr:g}" for a, lr in best.items()), flush=True)
        students = student_runs(self.spec, best)
        if "distill" in phases:
            summaries.update(zip([r.name for r in students],
                                 self._pool(lambda r, slot: self.distil(r, slot, best), students), strict=True))
        finals = [r for r in sweep if r.lr == best[r.arch]] + students
        tuned = self.tuned(finals)
        if "eval" in phases:
            evals = dict(zip([r.name for r in finals], self._pool(self.evaluate, finals), strict=True))
            for r, tasks in zip(tuned, self._pool(self.finetune, tuned), strict=True):
                evals[r.name]["finetune"] = tasks
        result = None
        if "report" in phases:
            if "eval" not in phases:
                evals = {r.name: _read_json(self.eval_prefix(r) + ".json", f"evaluation of {r.name}")[r.name]
                         for r in finals}
                for r in tuned:
                    evals[r.name]["finetune"] = _read_json(self.finetune_prefix(r) + ".json",
                                                           f"fine-tuning of {r.name}")["tasks"]
            summaries.update({r.name: _read_json(os.path.join(self.run_dir(r), "summary.json"), f"run {r.name}")
                              for r in students if r.name not in summaries})
            params = {arch: self.params(next(r for r in sweep if r.arch == arch))
                      for arch in self.spec["architectures"]}
            result = report.build(self.spec, {r.name: self.steps(r) for r in sweep + students}, sweep, students, best,
                                  summaries, evals, {r.name: os.path.join(self.run_dir(r), "metrics.jsonl")
                                                     for r in sweep + students}, params)
            paths = report.write(os.path.join(self.out, "study"), result)
            print("\n" + result["markdown"] + "\nwrote " + ", ".join(paths), flush=True)
        times = ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items())
        print(f"study: done in {time.time() - t0:.0f}s" + (f" ({times})" if times else ""), flush=True)
        return result


def run_study(spec, out, force=False, dry_run=False, threads=None, show=False, phases=PHASES):
    study = Study(spec, out, force, threads, show)
    if dry_run:
        print(study.plan())
        return None
    os.makedirs(study.out, exist_ok=True)
    atomic_write_json(os.path.join(study.out, "spec.json"), spec)
    return study.run(phases)

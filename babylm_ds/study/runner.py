"""Run a study: prepare the data, train every architecture at every lr and seed (zero-shot evaluation and
dev loss at each epoch end), select each architecture's lr on dev loss, distil the students from the
selected teachers, evaluate the selected runs and the students on every item, write the report.

Every run is a launcher job (DeepSpeed by default) in its own process: one per GPU when several are free,
one at a time on CPU. Re-running resumes: finished runs are skipped, killed runs continue from their last
checkpoint, runs whose spec entry changed are redone (stamps in OUT/stages, see training.jobs).
"""
import json
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from babylm_ds.study.spec import student_runs, sweep_runs
from babylm_ds.training.jobs import JobError, ROOT, job_env, launch_cmd, run_cmd, run_stage, verify_run
from babylm_ds.utils.io import atomic_write_json, sha256_file


def select_lr(spec, dev_loss):
    """{arch: lr with the lowest final dev loss, averaged over seeds}; `dev_loss`: {run name: loss}.

    Selection never looks at the zero-shot benchmarks that the study reports."""
    best = {}
    for arch, a in spec["architectures"].items():
        mean = {lr: sum(dev_loss[r.name] for r in sweep_runs(spec) if r.arch == arch and r.lr == lr) / len(spec["seeds"])
                for lr in a["lrs"]}
        finite = {lr: v for lr, v in mean.items() if math.isfinite(v)}
        if not finite:
            raise JobError(f"every learning rate of architecture {arch!r} diverged (dev loss {mean}); lower them")
        best[arch] = min(finite, key=finite.get)
    return best


class Study:
    def __init__(self, spec, out, force=False, threads=None):
        import torch

        self.spec, self.out, self.force = spec, os.path.abspath(out), force
        d = spec["data"]
        self.data = os.path.abspath(d["dir"]) if d["dir"] else os.path.join(self.out, "data")
        t = spec["training"]
        self.gpus = torch.cuda.device_count()
        self.world = 1 if t["launcher"] == "python" else t["world_size"]
        self.slots = max(1, self.gpus // self.world) if self.gpus else 1
        self.threads = threads or (max(1, (os.cpu_count() or 1) // self.world) if not self.gpus else 1)
        self.lock = threading.Lock()

    # --- paths ---------------------------------------------------------------------------------
    def run_dir(self, run):
        return os.path.join(self.out, "runs", run.name)

    def stamp(self, name):
        return os.path.join(self.out, "stages", f"{name}.json")

    def log(self, name):
        return os.path.join(self.out, "logs", f"{name}.log")

    # --- jobs ----------------------------------------------------------------------------------
    def _call(self, name, cmd, slot):
        device = None
        if self.gpus:
            device = ",".join(str(slot * self.world + i) for i in range(self.world))
        run_cmd(cmd, job_env(self.threads, device), self.log(name))

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

    def prepare(self):
        from babylm_ds.data import verify_data

        d = self.spec["data"]
        if d["dir"]:
            verify_data(self.data)
            return
        argv = ["--out", self.data, "--word-budget", str(d["word_budget"]), "--vocab-size", str(d["vocab_size"]),
                "--seq-len", str(d["seq_len"]), "--seed", str(d["seed"]), "--num-proc", "2", "--force"]
        argv += ["--max-words", str(d["max_words"])] if d["max_words"] else []
        argv += ["--corpus", os.path.abspath(d["corpus"])] if d["corpus"] else []
        cmd = [sys.executable, "-m", "babylm_ds.cli", "prepare", *argv]
        run_stage(self.stamp("prepare"), argv, [self.data], lambda: verify_data(self.data),
                  lambda resume: self._call("prepare", cmd, 0), self.force)

    def steps(self):
        """Optimizer steps of every run: `epochs` passes over the train split."""
        from babylm_ds.data import load_meta

        t = self.spec["training"]
        n = load_meta(self.data)["splits"]["train"]["num_sequences"]
        per_epoch = n // (t["micro_batch"] * self.world * t["grad_accum"])
        if per_epoch < 1:
            raise JobError(f"{n} training sequences are fewer than one global batch; lower training.micro_batch")
        return per_epoch, math.ceil(t["epochs"] * per_epoch)

    def _inputs(self, *manifests):
        from babylm_ds.data import load_meta

        return [load_meta(self.data)["fingerprint"], *[sha256_file(p) for p in manifests]]

    def train(self, run, slot, script="pretrain.py", extra=(), depends=()):
        t, e = self.spec["training"], self.spec["evaluation"]
        _, steps = self.steps()
        run_dir = self.run_dir(run)
        argv = ["--model", run.model, "--data", self.data, "--out", run_dir,
                "--ds_config", os.path.join(ROOT, t["ds_config"]), "--max-steps", str(steps),
                "--micro-batch", str(t["micro_batch"]), "--grad-accum", str(t["grad_accum"]), "--lr", str(run.lr),
                "--warmup-steps", str(t["warmup_steps"]), "--schedule", t["schedule"],
                "--weight-decay", str(t["weight_decay"]), "--min-lr-ratio", str(t["min_lr_ratio"]),
                "--clip", str(t["clip"]), "--seed", str(run.seed), "--save-every", str(t["save_every"]),
                "--log-every", "10", "--eval-zeroshot", e["tasks"], "--eval-limit", str(e["epoch_limit"]), *extra]
        argv += ["--dev-max-seqs", str(t["dev_max_seqs"])] if t["dev_max_seqs"] else []
        argv += ["--bf16"] if t["bf16"] else []
        argv += ["--model-config", *[f"{k}={v}" for k, v in run.config.items()]] if run.config else []
        spec = [script, t["launcher"], self.world, *argv, *self._inputs(*depends)]

        def go(resume):
            latest = os.path.join(run_dir, "checkpoints", "latest")
            more = ["--resume"] if resume and os.path.isfile(latest) else []
            self._call(run.name, launch_cmd(script, argv + more, self.world, t["launcher"]), slot)

        seconds = run_stage(self.stamp(run.name), spec, [run_dir], lambda: verify_run(run_dir, steps), go, self.force)
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        if seconds is not None:
            print(f"[{run.name}] done in {seconds:.0f}s: dev loss {summary['dev_loss']:.4f}", flush=True)
        return summary

    def distil(self, run, slot, best):
        """Cache the selected teachers' logits for this student and seed, then train it from the cache."""
        s, t = self.spec["students"][run.student], self.spec["training"]
        teachers = [self.run_dir(r) for r in sweep_runs(self.spec)
                    if r.arch in s["teachers"] and r.lr == best[r.arch] and r.seed == run.seed]
        finals = [os.path.join(d, "final") for d in teachers]
        cache = os.path.join(self.out, "cache", run.name)
        argv = ["--data", self.data, "--teachers", *finals, "--out", cache, "--k", str(s["k"])]
        spec = ["cache_logits.py", t["launcher"], self.world, *argv,
                *self._inputs(*[os.path.join(f, "manifest.json") for f in finals])]

        def check():
            from babylm_ds.cache import verify

            if problems := verify(cache):
                raise ValueError(problems[0])

        run_stage(self.stamp(f"cache-{run.name}"), spec, [cache], check,
                  lambda resume: self._call(f"cache-{run.name}", launch_cmd("cache_logits.py", argv, self.world,
                                                                            t["launcher"]), slot), self.force)
        extra = ["--teacher-cache", cache, "--alpha", str(s["alpha"]), "--temperature", str(s["temperature"])]
        return self.train(run, slot, "distill.py", extra, [os.path.join(cache, "manifest.json")])

    def evaluate(self, run, slot):
        """Every item of the final model (or evaluation.final_limit per paradigm), per-item results kept."""
        e = self.spec["evaluation"]
        final, prefix = os.path.join(self.run_dir(run), "final"), os.path.join(self.out, "eval", run.name)
        argv = ["--model", final, "--out", prefix, "--name", run.name, "--tasks", e["tasks"], "--ppl-data", self.data,
                "--items", "--device", "cuda" if self.gpus else "cpu"]
        argv += ["--limit", str(e["final_limit"])] if e["final_limit"] else []
        model_sha = sha256_file(os.path.join(final, "manifest.json"))

        def check():
            with open(prefix + ".json") as f:
                result = json.load(f)[run.name]
            if result["model_manifest_sha256"] != model_sha or result["limit"] != e["final_limit"]:
                raise ValueError(f"{prefix}.json was made for another model or limit")

        cmd = [sys.executable, os.path.join(ROOT, "launchers", "evaluate.py"), *argv]
        run_stage(self.stamp(f"eval-{run.name}"), [*argv, model_sha], [], check,
                  lambda resume: self._call(f"eval-{run.name}", cmd, slot), self.force)
        with open(prefix + ".json") as f:
            return json.load(f)[run.name]

    def params(self, run):
        """Parameter count of a run's exported model (built on the meta device)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        import babylm_ds.models  # noqa: F401  (registers the project's model types)
        from babylm_ds.models import count_parameters

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(os.path.join(self.run_dir(run), "final")))
        return count_parameters(model)

    # --- the study -----------------------------------------------------------------------------
    def plan(self):
        """Human-readable plan: the sweep runs now, the students once the lrs are selected."""
        lines = [f"study {self.spec['name']}: out={self.out} data={self.data} "
                 f"{'%d GPU(s)' % self.gpus if self.gpus else 'CPU'}, {self.slots} run(s) at a time"]
        lines += [f"  pretrain {r.name}: {r.model} lr={r.lr:g} seed={r.seed}" for r in sweep_runs(self.spec)]
        for name, s in self.spec["students"].items():
            lines.append(f"  student {name}: {self.spec['architectures'][s['arch']]['model']} at the lr selected for "
                         f"{s['arch']}, from the selected run(s) of {'+'.join(s['teachers'])} (k={s['k']}, "
                         f"alpha={s['alpha']}, T={s['temperature']}); no-KD twin: the selected {s['arch']} run")
        return "\n".join(lines)

    def run(self):
        from babylm_ds.study import report

        print(self.plan(), flush=True)
        self.prepare()
        sweep = sweep_runs(self.spec)
        summaries = dict(zip([r.name for r in sweep], self._pool(self.train, sweep)))
        best = select_lr(self.spec, {name: s["dev_loss"] for name, s in summaries.items()})
        print("selected on dev loss: " + ", ".join(f"{a} lr={lr:g}" for a, lr in best.items()), flush=True)
        students = student_runs(self.spec, best)
        summaries.update(zip([r.name for r in students], self._pool(lambda r, slot: self.distil(r, slot, best),
                                                                    students)))
        finals = [r for r in sweep if r.lr == best[r.arch]] + students
        evals = dict(zip([r.name for r in finals], self._pool(self.evaluate, finals)))
        params = {arch: self.params(next(r for r in sweep if r.arch == arch)) for arch in self.spec["architectures"]}
        result = report.build(self.spec, self.steps(), sweep, students, best, summaries, evals,
                              {r.name: os.path.join(self.run_dir(r), "metrics.jsonl") for r in sweep + students}, params)
        paths = report.write(os.path.join(self.out, "study"), result)
        print(result["markdown"] + "\nwrote " + ", ".join(paths), flush=True)
        return result


def run_study(spec, out, force=False, dry_run=False, threads=None):
    study = Study(spec, out, force, threads)
    if dry_run:
        print(study.plan())
        return None
    os.makedirs(study.out, exist_ok=True)
    atomic_write_json(os.path.join(study.out, "spec.json"), spec)
    return study.run()

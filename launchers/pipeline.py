"""End-to-end job: prepare data -> pretrain the teacher(s) -> cache their logits -> distil a BabyHGRN student
-> train the same student without KD -> zero-shot eval of all of them -> one comparison table.

    python launchers/pipeline.py --out outputs/demo                 (`make demo`: tiny presets, minutes on CPU)
    python launchers/pipeline.py --out runs/x --max-words 2000000 --steps 2000 --full-eval

Each stage shells out to the project's own commands (`babylm-ds prepare`, the deepspeed launcher
over launchers/{pretrain,cache_logits,distill}.py, launchers/evaluate.py), so it exercises exactly
what a user runs. A stage is skipped when its output exists and verifies (checksums, step counts,
eval settings) and was made by the same command; an interrupted stage is resumed (`--resume`), a
changed one is redone from scratch. --force redoes the selected --stages.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from babylm_ds.training import preempt  # noqa: E402
from babylm_ds.training.jobs import JobError, job_env, job_exit, launch_cmd, run_cmd, run_stage, verify_run  # noqa: E402
from babylm_ds.utils.io import sha256_file  # noqa: E402

STAGES = ("prepare", "teachers", "cache", "distill", "baseline", "eval", "report")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output dir (data/, runs/, cache/, eval/, results.{md,json,png})")
    p.add_argument("--corpus", default=None, help="corpus for `babylm-ds prepare` (default: the embedded one)")
    p.add_argument("--max-words", type=int, default=300_000, help="truncate the corpus to about N words")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=150, help="optimizer steps of each student run (KD and no KD)")
    p.add_argument("--teacher-steps", type=int, default=None, help="optimizer steps of each teacher (default 2 x --steps)")
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--teachers", nargs="+", default=["babyhgrn-cpu"], help="teacher presets")
    p.add_argument("--student", default="babyhgrn-tiny", help="student preset (KD and no-KD runs)")
    p.add_argument("--k", type=int, default=32, help="teacher top-k ids cached per token")
    p.add_argument("--alpha", type=float, default=0.5, help="CE weight in the KD loss")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--ds-config", default=os.path.join(ROOT, "ds_configs", "zero2.json"))
    p.add_argument("--world-size", type=int, default=2, help="processes per training/caching run")
    p.add_argument("--launcher", choices=("deepspeed", "torchrun", "python"), default="deepspeed",
                   help="python: one process (forces --world-size 1)")
    p.add_argument("--eval-limit", type=int, default=50, help="items per zero-shot paradigm")
    p.add_argument("--full-eval", action="store_true", help="evaluate on every item (overrides --eval-limit)")
    p.add_argument("--eval-tasks", default="blimp,supplement,ewok")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of stages to run, of {','.join(STAGES)}")
    p.add_argument("--force", action="store_true", help="redo the selected stages even if their outputs verify")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    if bad := [s for s in stages if s not in STAGES]:
        p.error(f"unknown stage(s) {bad}; choose from {','.join(STAGES)}")
    args.teacher_steps = args.teacher_steps or 2 * args.steps
    if min(args.steps, args.teacher_steps, args.world_size, args.max_words) < 1:
        p.error("--steps, --teacher-steps, --world-size and --max-words must be >= 1")
    args.stages = stages
    if args.launcher == "python":
        args.world_size = 1
    if args.full_eval:
        args.eval_limit = None
    return args


class Pipeline:
    def __init__(self, args):
        import torch

        self.args, self.out = args, os.path.abspath(args.out)
        self.data, self.cache = os.path.join(self.out, "data"), os.path.join(self.out, "cache")
        self.gpus = torch.cuda.device_count()
        self.world = min(args.world_size, self.gpus) if self.gpus else args.world_size
        self.cpus = os.cpu_count() or 1
        self.teachers = {f"teacher-{t}": os.path.join(self.out, "runs", f"teacher-{t}") for t in args.teachers}
        self.students = {f"student-kd-{args.student}": os.path.join(self.out, "runs", "student-kd"),
                         f"student-nokd-{args.student}": os.path.join(self.out, "runs", "student-nokd")}
        if not self.gpus:  # as for the stages' commands; DeepSpeed (imported for free_port) then does not warn
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.times, self.current = {}, "pipeline"

    # --- running commands ---------------------------------------------------------------------
    def launch(self, script, argv):
        return launch_cmd(script, argv, self.world, self.args.launcher)

    def call(self, cmd, threads=None):
        """Run `cmd`; its whole output goes to OUT/logs/STAGE.log, the terminal gets it without NOISE."""
        try:
            run_cmd(cmd, job_env(threads or max(1, self.cpus // self.world)),
                    os.path.join(self.out, "logs", f"{self.current}.log"), show=True)
        except JobError as e:
            raise job_exit("pipeline", e) from None

    def stage(self, name, spec, outputs, verify, run):
        """Run `run(resume)` unless `outputs` verify and were made by the same `spec` (training.jobs.run_stage)."""
        self.current = name
        try:
            seconds = run_stage(os.path.join(self.out, "stages", f"{name}.json"), spec, outputs, verify, run,
                                self.args.force)
        except JobError as e:
            raise job_exit("pipeline", e) from None
        if seconds is not None:
            self.times[name] = seconds

    def inputs(self, *paths):
        """Identity of a stage's inputs: the data fingerprint plus sha256 of the given manifests."""
        from babylm_ds.data import load_meta

        try:
            return [load_meta(self.data)["fingerprint"], *[sha256_file(p) for p in paths]]
        except (OSError, ValueError) as e:
            raise SystemExit(f"pipeline: an input of this stage is missing ({e}); run the earlier stages first")

    # --- stages -------------------------------------------------------------------------------
    def prepare(self):
        from babylm_ds.data import verify_data

        a = self.args
        argv = ["--out", self.data, "--max-words", str(a.max_words), "--vocab-size", str(a.vocab_size),
                "--seq-len", str(a.seq_len), "--seed", str(a.seed), "--num-proc", str(min(2, self.cpus)), "--force"]
        if a.corpus:
            argv += ["--corpus", os.path.abspath(a.corpus)]
        cmd = [sys.executable, "-m", "babylm_ds.cli", "prepare", *argv]
        self.stage("prepare", argv, [self.data], lambda: verify_data(self.data),
                   lambda resume: self.call(cmd, threads=self.cpus))

    def train(self, name, run_dir, script, model, steps, extra=(), depends=()):
        a = self.args
        argv = ["--model", model, "--data", self.data, "--out", run_dir, "--ds_config", os.path.abspath(a.ds_config),
                "--max-steps", str(steps), "--micro-batch", str(a.micro_batch), "--lr", str(a.lr),
                "--warmup-steps", str(max(1, steps // 10)), "--seed", str(a.seed), "--log-every", "5", *extra]
        spec = [script, a.launcher, str(self.world), *argv, *self.inputs(*depends)]

        def run(resume):
            latest = os.path.join(run_dir, "checkpoints", "latest")
            self.call(self.launch(script, argv + (["--resume"] if resume and os.path.isfile(latest) else [])))

        self.stage(name, spec, [run_dir], lambda: verify_run(run_dir, steps), run)

    def cache_logits(self):
        from babylm_ds.cache import verify

        def check():
            if problems := verify(self.cache):
                raise ValueError(problems[0])

        finals = [os.path.join(d, "final") for d in self.teachers.values()]
        argv = ["--data", self.data, "--teachers", *finals, "--out", self.cache, "--k", str(self.args.k)]
        spec = ["cache_logits.py", self.args.launcher, str(self.world), *argv,
                *self.inputs(*[os.path.join(f, "manifest.json") for f in finals])]
        self.stage("cache", spec, [self.cache], check, lambda resume: self.call(self.launch("cache_logits.py", argv)))

    def evaluate(self, name, run_dir):
        a = self.args
        final, prefix = os.path.join(run_dir, "final"), os.path.join(self.out, "eval", name)
        argv = ["--model", final, "--out", prefix, "--name", name, "--tasks", a.eval_tasks, "--ppl-data", self.data]
        argv += ["--limit", str(a.eval_limit)] if a.eval_limit else []
        model_sha = self.inputs(os.path.join(final, "manifest.json"))[1]

        def check():
            with open(prefix + ".json") as f:
                result = json.load(f)[name]
            if result["model_manifest_sha256"] != model_sha or result["limit"] != a.eval_limit:
                raise ValueError(f"{prefix}.json was made for another model or --eval-limit")

        cmd = [sys.executable, os.path.join(ROOT, "launchers", "evaluate.py"), *argv]
        self.stage(f"eval-{name}", [*argv, model_sha], [], check, lambda resume: self.call(cmd, threads=self.cpus))

    def report(self):
        from babylm_ds.evaluation import report

        results = {}
        for name in [*self.teachers, *self.students]:
            path = os.path.join(self.out, "eval", f"{name}.json")
            if not os.path.isfile(path):
                raise SystemExit(f"pipeline: {path} is missing; run the eval stage first")
            with open(path) as f:
                results[name] = json.load(f)[name]
        limit = self.args.eval_limit
        title = f"Zero-shot accuracy (%), {'all items' if limit is None else f'first {limit} items per paradigm'}"
        md = report.save(os.path.join(self.out, "results"), results, title, details=False)
        report.bar_chart(os.path.join(self.out, "results.png"), results, title)
        print("\n" + md + f"\nsaved {self.out}/results.{{md,json,png}}", flush=True)

    def run(self):
        a, t0 = self.args, time.time()
        print(f"pipeline: out={self.out} stages={','.join(a.stages)} world={self.world} launcher={a.launcher} "
              f"device={'cuda x%d' % self.gpus if self.gpus else 'cpu'}", flush=True)
        student_kd, student_nokd = self.students.values()
        for s in a.stages:
            if s == "prepare":
                self.prepare()
            elif s == "teachers":
                for (name, run_dir), preset in zip(self.teachers.items(), a.teachers):
                    self.train(name, run_dir, "pretrain.py", preset, a.teacher_steps)
            elif s == "cache":
                self.cache_logits()
            elif s == "distill":
                self.train("distill", student_kd, "distill.py", a.student, a.steps,
                           ["--teacher-cache", self.cache, "--alpha", str(a.alpha), "--temperature", str(a.temperature)],
                           [os.path.join(self.cache, "manifest.json")])
            elif s == "baseline":
                self.train("baseline", student_nokd, "pretrain.py", a.student, a.steps)
            elif s == "eval":
                for name, run_dir in [*self.teachers.items(), *self.students.items()]:
                    self.evaluate(name, run_dir)
            elif s == "report":
                self.report()
        times = ", ".join(f"{k} {v}s" for k, v in self.times.items())
        print(f"pipeline: done in {time.time() - t0:.0f}s" + (f" ({times})" if times else ""), flush=True)


def main(argv=None):
    args = parse_args(argv)
    preempt.relay()  # preempt: SIGTERM/SIGUSR1 reach the running job's ranks; the pipeline then stops (exit 75)
    Pipeline(args).run()
    return 0


if __name__ == "__main__":
    from babylm_ds.utils.cli import run_cli
    sys.exit(run_cli(main))

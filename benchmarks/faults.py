"""Fault and bad-input suite on tiny presets, CPU: kill -9 anywhere loses nothing, a stop signal loses no step,
every planted bad input is refused before training with one line, a dead or hung rank ends the job after
--dist-timeout.

    python benchmarks/faults.py            (full: 20 cache, 20 pretrain, 10 distill kill trials, 10 pretrain and
                                            6 distill signal trials; ≈1.5 h on 2 cores)
    python benchmarks/faults.py --quick    (1 pretrain kill trial aimed at a checkpoint save, 1 pretrain SIGTERM
                                            trial, 4 bad inputs + the op's checks; what CI runs)

Kill trials run 2 ranks under torchrun and SIGKILL the launcher's process group at a random moment: a random
time, a random step plus up to 0.3 s, or (every third training trial, the first included) the moment a
random checkpoint is being written, before it is sealed; the ranks die with the launcher
(PR_SET_PDEATHSIG). Then the same command is rerun (with --resume when a checkpoint exists) and compared with
an uninterrupted reference: cache shards byte for byte (corrupt, missing, duplicated sequences), training
per-step losses bit for bit (CPU fp32). Bad inputs run in one process (`python launcher ...`), each on its
own damaged copy; "good files changed" compares the sha256 of every file that must survive, before and
after. Signal trials (`--parts signals`) send SIGTERM or SIGUSR1 to a 2-rank pretrain/distill at a random moment
(a random step plus up to 0.3 s, a random time, or while a checkpoint is being written), to the launcher alone
or to every process of the job (as SLURM does), under torchrun or the deepspeed launcher, some with a second
signal while the stop's checkpoint is written; then count the steps done but not saved, check the checkpoint's
checksums, and resume it against the uninterrupted reference. Prints a table and writes
benchmarks/results/faults.json (--json).
"""
import argparse
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from babylm_ds.models.manifest import write_manifest  # noqa: E402
from babylm_ds.training.dist import free_port  # noqa: E402
from babylm_ds.training.guard import verify_checkpoint  # noqa: E402
from babylm_ds.utils.io import lock_dir  # noqa: E402

PY = sys.executable
HANG = 900  # seconds: a guard against hangs, never a judgement of speed
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT),
       "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))}
MICRO = dict(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
MODEL = ["--model", "llama-tiny", "--model-config", *[f"{k}={v}" for k, v in MICRO.items()]]
TRAIN = [*MODEL, "--micro-batch", "4", "--lr", "3e-3", "--warmup-steps", "2", "--log-every", "1",
         "--dev-max-seqs", "8", "--dist-timeout", "60"]
STEPS = ["--max-steps", "12", "--save-every", "3"]


def script(name):
    return str(ROOT / "launchers" / name)


def torchrun(name, *argv):
    return [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            script(name), *argv]


PORTS = []  # master ports of the deepspeed-launcher runs: their /dev/shm buffer names contain them


def deepspeed(name, *argv):
    """The deepspeed launcher (sets LOCAL_SIZE, so DeepSpeed's /dev/shm all-reduce buffers are made)."""
    PORTS.append(free_port())
    return [PY, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(PORTS[-1]),
            script(name), *argv]


def run(cmd, log, env=None, timeout=HANG):
    """Run to the end; returns (exit code, seconds, output)."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**ENV, **(env or {})}, cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"hung for {timeout}s: {' '.join(cmd)} (log {log})") from None
    return rc, time.time() - t0, Path(log).read_text(errors="replace")


def survivors(tag):
    """Pids of processes whose command line mentions `tag` (a trial's unique --out)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if tag.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and int(pid) != os.getpid():
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def start_until(cmd, log, out, seconds=None, step=None, save=None, progress=None):
    """Start `cmd` (its own process group) and return it at a moment: after `seconds`, or once `progress(out)`
    (default: the last step in metrics.jsonl) reaches `step`, plus up to 0.3 s, or the moment checkpoint
    `step{save}` is being written (its dir exists, unsealed); or when it has ended."""
    rng, progress = random.Random(f"{out}{seconds}{step}{save}"), progress or _last_step
    if save is not None:
        step, progress = save, _unsealed
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, start_new_session=True)
    t0 = time.time()
    while proc.poll() is None:
        if seconds is not None and time.time() - t0 >= seconds:
            break
        if step is not None and progress(out) >= step:
            time.sleep(0 if save is not None else rng.uniform(0, 0.3))
            break
        time.sleep(0.005 if save is not None else 0.02)
    return proc


def reap(out, wait):
    """Wait up to `wait` s for every process whose command line mentions `out` to end; SIGKILL the rest and
    return how many there were (orphans)."""
    t1 = time.time()
    while survivors(str(out)) and time.time() - t1 < wait:
        time.sleep(0.1)
    left = survivors(str(out))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return len(left)


def kill_at(cmd, log, out, progress=None, **moment):
    """SIGKILL the process group of `cmd` at a `moment` (see `start_until`); returns (whether it was killed,
    number of its processes still alive 30 s later, then killed here)."""
    proc = start_until(cmd, log, out, progress=progress, **moment)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed, reap(out, 30)


def signal_at(cmd, log, out, sig, target, second=False, **moment):
    """Send `sig` to `cmd` at a `moment` (see `start_until`), to the launcher alone (target "launcher") or to
    every process of the job ("group"; torchrun's ranks run in sessions of their own, so they get it from
    torchrun); with `second`, send it again to every process of the job while the stop's checkpoint is written.
    Returns the trial's facts: whether it was signalled and when, the launcher's exit code, orphans (processes
    left 60 s after the launcher ended: ranks may outlive a launcher that died of the signal)."""
    proc, t0 = start_until(cmd, log, out, **moment), time.time()
    facts = {"signalled": proc.poll() is None, "at_step": _last_step(out), "second_during_save": False}
    if facts["signalled"]:
        (os.kill if target == "launcher" else os.killpg)(proc.pid, sig)
        while second and (proc.poll() is None or survivors(str(out))) and time.time() - t0 < HANG:
            if _unsealed(out):
                for pid in survivors(str(out)):
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
                facts["second_during_save"] = True
                break
            time.sleep(0.005)
    try:
        facts["exit"] = proc.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"hung for {HANG}s after {signal.Signals(sig).name}: {' '.join(cmd)} (log {log})") from None
    facts["orphans"] = reap(out, 60)
    return facts


def stop_kind(row):
    """How a signal trial ended: "training" (stopped after a step, saved), "starting" (stopped before the first
    step: nothing to save), "finished" (the run ended first), "launcher" (the launcher died of the signal
    before it started any rank: empty log, nothing ran), else "unexplained"."""
    if row["lines"]:
        return "training" if " at step " in row["lines"][0] else "starting"
    if row.get("finished", row.get("stopped") == "finished"):
        return "finished"
    launcher_only = row["steps_done"] == 0 and row["exit"] == -getattr(signal, row["signal"])
    return "launcher" if launcher_only else "unexplained"


def _last_step(out):
    try:
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(x)["step"] for x in lines if x.strip()), default=0)
    except (OSError, ValueError):
        return 0


def _unsealed(out):
    """The step of a checkpoint being saved (its dir exists, its checksums.json not yet), else 0."""
    return max((int(d.name[4:]) for d in Path(out, "checkpoints").glob("step*")
                if d.name[4:].isdigit() and not (d / "checksums.json").exists()), default=0)


def flip_byte(path, div=2):
    """Flip the lowest bit of the byte at len // div of the file `path`."""
    b = bytearray(Path(path).read_bytes())
    b[len(b) // div] ^= 1
    Path(path).write_bytes(bytes(b))


def error_lines(text):
    return [x for x in text.splitlines() if "error:" in x]


def losses(out, key="train/loss"):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r[key] for r in rows if key in r}


def tree(path):
    """{relative path: sha256} of every file under `path` (the lock file aside)."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


class Suite:
    def __init__(self, work, quick):
        self.work, self.quick, self.rng = Path(work), quick, random.Random(0)
        self.data, self.teacher = self.work / "data", self.work / "teacher"
        self.results = {"kill": {}, "signals": {}, "bad_inputs": [], "ranks": []}
        self.refs = {}

    def log(self, name):
        return str(self.work / "logs" / f"{name}.log")

    # --- shared inputs ------------------------------------------------------------------------
    def setup(self):
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        rc, _, out = run([PY, "-m", "babylm_ds.cli", "prepare", "--out", str(self.data), "--max-words", "20000",
                          "--vocab-size", "500", "--seq-len", "32", "--num-proc", "1", "--force"], self.log("prepare"))
        assert rc == 0, out[-2000:]
        import torch

        from babylm_ds.data import load_tokenizer
        from babylm_ds.models import build_model
        torch.manual_seed(0)
        model = build_model("llama-tiny", vocab_size=500, **MICRO)
        model.save_pretrained(self.teacher)
        load_tokenizer(self.data).save_pretrained(self.teacher)
        write_manifest(self.teacher)  # as an export has one (teachers are verified before they are read)

    def cache_cmd(self, out, *extra, launch=torchrun):
        return launch("cache_logits.py", "--data", str(self.data), "--teachers", str(self.teacher), "--out", str(out),
                        "--k", "8", "--shard-size", "64", "--batch-size", "16", "--kl-sample", "4", *extra)

    def train_cmd(self, name, out, *extra, launch=torchrun):
        argv = [*TRAIN, *STEPS, "--data", str(self.data), "--out", str(out), *extra]
        if name == "distill.py":
            argv += ["--teacher-cache", str(self.work / "ref-cache")]
        return launch(name, *argv)

    # --- kill -9 trials -----------------------------------------------------------------------
    def cache_reference(self):
        """The uninterrupted cache (deepspeed launcher, 2 ranks; distill's teacher cache), made once: seconds."""
        if "cache" not in self.refs:
            rc, seconds, out = run(self.cache_cmd(self.work / "ref-cache", launch=deepspeed), self.log("ref-cache"))
            assert rc == 0, out[-3000:]
            self.refs["cache"] = seconds
        return self.refs["cache"]

    def cache_trials(self, n):
        ref, seconds = self.work / "ref-cache", self.cache_reference()
        want, rows = tree(ref), []
        from babylm_ds.cache import TeacherCache, verify
        ref_cache = TeacherCache(ref)
        for i in range(n):
            out = self.work / f"cache-kill-{i}"
            how = dict(seconds=self.rng.uniform(0, seconds)) if i % 2 else dict(step=self.rng.randint(0, 23))
            killed, orphans = kill_at(self.cache_cmd(out), self.log(f"cache-kill-{i}"), out, **how,
                                      progress=lambda d: len(list(Path(d).glob("shards/*.json"))))
            rc, _, text = run(self.cache_cmd(out), self.log(f"cache-rerun-{i}"))
            ok = rc == 0 and verify(str(out)) == []
            corrupt = missing = duplicated = 0
            if ok:
                cache = TeacherCache(out)
                duplicated = sum(1 for a, b in itertools.pairwise(cache.shards) if b["start"] < a["end"])
                for j in range(len(ref_cache)):
                    if not any(s["start"] <= j < s["end"] for s in cache.shards):
                        missing += 1
                    elif cache.records([j]).tobytes() != ref_cache.records([j]).tobytes():
                        corrupt += 1
            rows.append({"kill": how, "killed": killed, "orphans": orphans, "rerun_rc": rc, "verified": ok,
                         "corrupt": corrupt,
                         "missing": missing if ok else len(ref_cache), "duplicated": duplicated,
                         "byte_identical": tree(out) == want})
            shutil.rmtree(out, ignore_errors=True)
        self.results["kill"]["cache_logits.py"] = {"reference_seconds": round(seconds, 1), "trials": rows}

    def reference(self, name):
        """The uninterrupted run of `name` (deepspeed launcher, 2 ranks), made once: (per-step losses, seconds)."""
        ref = self.work / f"ref-{name}"
        if name not in self.refs:
            rc, seconds, out = run(self.train_cmd(name, ref, launch=deepspeed), self.log(f"ref-{name}"))
            assert rc == 0, out[-3000:]
            self.refs[name] = losses(ref), seconds
        return self.refs[name]

    def train_trials(self, name, n):
        want, seconds = self.reference(name)
        rows = []
        for i in range(n):
            out = self.work / f"{name}-kill-{i}"
            how = [dict(save=self.rng.choice([3, 6, 9, 12])),  # --save-every 3 of 12 steps
                   dict(step=self.rng.randint(1, 12)), dict(seconds=self.rng.uniform(0, seconds))][i % 3]
            killed, orphans = kill_at(self.train_cmd(name, out), self.log(f"{name}-kill-{i}"), out, **how)
            mid_save = _unsealed(out) > 0
            resume = ["--resume"] if (out / "checkpoints" / "latest").exists() else []
            rc, _, text = run(self.train_cmd(name, out, *resume), self.log(f"{name}-rerun-{i}"))
            got = losses(out) if rc == 0 else {}
            rows.append({"kill": how, "killed": killed, "orphans": orphans, "killed_mid_save": mid_save,
                         "resumed": bool(resume), "rerun_rc": rc, "steps": len(got), "bit_identical": got == want,
                         "error": "" if rc == 0 else text.strip().splitlines()[-1][:200]})
            shutil.rmtree(out, ignore_errors=True)
        self.results["kill"][name] = {"reference_seconds": round(seconds, 1), "trials": rows}

    # --- stop signals -------------------------------------------------------------------------
    def signal_trials(self, name, n):
        """n trials of `name`: SIGUSR1 in every third, SIGTERM in the others; torchrun / deepspeed launcher and
        launcher / whole job alternate; a second signal during the stop's save in trials 3-5, 9-11, ...; resumed
        with the same launcher and compared with the reference (per-step train and dev losses, bit for bit)."""
        want, seconds = self.reference(name)
        want_dev = losses(self.work / f"ref-{name}", "dev/loss")
        rows = []
        for i in range(n):
            sig = signal.SIGUSR1 if i % 3 == 2 else signal.SIGTERM
            launch, target = (torchrun, deepspeed)[i % 2], ("launcher", "group")[i // 2 % 2]
            how = self.rng.choice([dict(step=self.rng.randint(1, 11)), dict(save=self.rng.choice([3, 6, 9])),
                                   dict(seconds=self.rng.uniform(0, seconds))][:1 if self.quick else 3])
            out = self.work / f"{name}-signal-{i}"
            facts = signal_at(self.train_cmd(name, out, launch=launch), self.log(f"{name}-signal-{i}"), out, sig,
                              target, second=i // 3 % 2 == 1, **how)
            said = [x.strip() for x in Path(self.log(f"{name}-signal-{i}")).read_text(errors="replace").splitlines()
                    if ": stopped by " in x]
            latest = out / "checkpoints" / "latest"
            ckpt = int(latest.read_text().strip()[4:]) if latest.exists() else 0
            done = _last_step(out)  # the steps trained (and logged) before the job ended
            try:
                corrupt = int(latest.exists() and not verify_checkpoint(out / "checkpoints"))
            except ValueError:
                corrupt = 1
            finished = (out / "summary.json").exists()
            resume = ["--resume"] if latest.exists() and not finished else []
            rc, _, text = (0, 0, "") if finished else run(self.train_cmd(name, out, *resume, launch=launch),
                                                           self.log(f"{name}-signal-rerun-{i}"))
            got = losses(out) if rc == 0 else {}
            rows.append({"signal": signal.Signals(sig).name, "launcher": launch.__name__, "target": target,
                         "moment": how, **facts, "lines": said, "one_line": len(said) == 1, "finished": finished,
                         "checkpoint_step": ckpt, "steps_done": done, "steps_lost": done - ckpt,
                         "corrupt": corrupt, "resumed": bool(resume), "rerun_rc": rc,
                         "bit_identical": got == want and losses(out, "dev/loss") == want_dev,
                         "error": "" if rc == 0 else text.strip().splitlines()[-1][:200]})
            rows[-1]["stopped"] = stop_kind(rows[-1])
            print(f"  signal trial {name} {i}: {rows[-1]['signal']} {launch.__name__}/{target} {how}: "
                  f"{rows[-1]['stopped']}, lost {rows[-1]['steps_lost']}, identical {rows[-1]['bit_identical']}",
                  flush=True)
            shutil.rmtree(out, ignore_errors=True)
        self.results["signals"][name] = {"reference_seconds": round(seconds, 1), "trials": rows}

    # --- planted bad inputs -------------------------------------------------------------------
    def bad(self, name, cmd, keep=(), env=None, check=lambda: True, at_start=True):
        """Run `cmd` (expected to be refused); record its last error line, exit code, seconds, whether it
        trained (logged a new training step), and whether any file under `keep` changed. `check()`: any
        further condition for counting it as refused; `at_start=False`: a fault met while training."""
        out = next((Path(cmd[i + 1]) for i, a in enumerate(cmd) if a == "--out"), None)
        metrics = out / "metrics.jsonl" if out else Path("/nonexistent")
        read = lambda: metrics.read_text() if metrics.is_file() else ""  # noqa: E731
        before, logged = {str(k): tree(k) for k in keep}, read()
        rc, seconds, text = run(cmd, self.log(f"bad-{len(self.results['bad_inputs'])}"), env=env)
        lines = error_lines(text)
        trained = read() != logged and "train/loss" in read()
        row = {"input": name, "exit": rc, "seconds": round(seconds, 1), "message": lines[-1][:300] if lines else "",
               "one_line": len(lines) == 1 and "Traceback" not in text, "trained": trained,
               "good_files_changed": any(tree(k) != v for k, v in before.items())}
        row["refused"] = (rc != 0 and row["one_line"] and not (trained and at_start) and not row["good_files_changed"]
                          and check())
        self.results["bad_inputs"].append(row)
        print(f"  {'ok ' if row['refused'] else 'BAD'} {name}: exit {rc}, {row['message'][:140]}", flush=True)

    def copy(self, src, name):
        dst = self.work / "planted" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        return dst

    def damaged_data(self, name, damage):
        d = self.copy(self.data, name)
        meta = json.loads((d / "meta.json").read_text())
        shard = d / meta["splits"]["train"]["shards"][0]["path"]
        if damage == "flip":
            flip_byte(shard)
        elif damage == "truncate":
            shard.write_bytes(shard.read_bytes()[:-64])
        elif damage == "sha256":
            meta["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
        elif damage == "vocab_size":
            meta["vocab_size"] = 400
        elif damage == "token_id":  # a consistent shard (sha256, fingerprint) holding an id >= vocab_size
            import numpy as np

            from babylm_ds.data.pack import fingerprint
            ids = np.fromfile(shard, "<u2")
            ids[5] = 499 + 7
            shard.write_bytes(ids.tobytes())
            meta["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
            meta["fingerprint"] = fingerprint(meta)
        if damage == "malformed":
            (d / "meta.json").write_text((d / "meta.json").read_text() + "}\n")
        elif damage in ("sha256", "vocab_size", "token_id"):
            (d / "meta.json").write_text(json.dumps(meta, indent=2))
        return d

    def damaged_cache(self, name, damage):
        c = self.copy(self.work / "ref-cache", name)
        manifest = json.loads((c / "manifest.json").read_text())
        shard = c / manifest["shards"][1]["path"]
        if damage == "flip":
            flip_byte(shard, 3)
        elif damage == "missing":
            shard.unlink()
        elif damage in ("sha256", "k", "fingerprint"):
            if damage == "sha256":
                manifest["shards"][1]["sha256"] = "f" * 64
            elif damage == "k":
                manifest["config"]["k"] = 4
            else:
                manifest["config"]["fingerprint"] = "0" * 64
            (c / "manifest.json").write_text(json.dumps(manifest, indent=2))
        elif damage == "malformed":
            (c / "manifest.json").write_text((c / "manifest.json").read_text()[:-40])
        return c

    def pretrain(self, out, *extra, data=None):
        return [PY, script("pretrain.py"), *TRAIN, "--max-steps", "4", "--data", str(data or self.data),
                "--out", str(out), *extra]

    def distill(self, out, cache, *extra):
        return [PY, script("distill.py"), *TRAIN, "--max-steps", "4", "--data", str(self.data), "--out", str(out),
                "--teacher-cache", str(cache), *extra]

    def bad_inputs(self):
        w, new = self.work / "planted", lambda name: self.work / "planted" / f"out-{name}"
        w.mkdir(exist_ok=True)
        self.bad("--lr 1e38", self.pretrain(new("lr38"), "--lr", "1e38"))
        self.bad("--model-config vocab_size=500", self.pretrain(new("vocab"), "--model-config", "vocab_size=500"))
        d = self.damaged_data("data-flip", "flip")
        self.bad("data shard, one byte flipped", self.pretrain(new("data-flip"), data=d), keep=[d])
        nan = new("nan")  # diverges after the step-2 checkpoint: stops, keeps it, exports nothing
        self.bad("NaN loss at step 3 (diverged run)", self.pretrain(nan, "--save-every", "2"),
                 env={"BABYLM_DS_FAULT_AT_STEP": "0:2:nan"}, at_start=False, check=lambda: not (nan / "final").exists()
                 and (nan / "checkpoints" / "latest").read_text() == "step2")
        if not self.quick:
            self.bad_files_inputs(w, new)
            self.bad_cache_inputs(new)

    def bad_files_inputs(self, w, new):
        prepare = [PY, "-m", "babylm_ds.cli", "prepare", "--vocab-size", "300", "--seq-len", "16", "--num-proc", "1"]
        corpora = {"empty corpus": b"", "binary corpus": bytes(range(256)) * 8,
                   "non-UTF-8 corpus": "café".encode("latin-1") * 99}
        for i, (name, data) in enumerate(corpora.items()):
            (w / f"corpus{i}.txt").write_bytes(data)
            self.bad(name, [*prepare, "--corpus", str(w / f"corpus{i}.txt"), "--out", str(new(f"prep{i}"))])
        self.bad("word budget exceeded",
                 [*prepare, "--max-words", "5000", "--word-budget", "1k", "--out", str(new("prep"))])
        self.bad("finished data dir without --force", [*prepare, "--out", str(self.data)], keep=[self.data])
        self.bad("--lr 1e6", self.pretrain(new("lr6"), "--lr", "1e6"))
        bad_cfg = w / "batch.json"
        bad_cfg.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 2}}))
        self.bad("ds_config batch identity", self.pretrain(new("ds"), "--ds_config", str(bad_cfg)))
        self.bad("--resume with nothing to resume", self.pretrain(new("resume"), "--resume"))
        finished = self.work / "ref-pretrain.py"
        if finished.exists():
            self.bad("finished --out without --resume", self.pretrain(finished), keep=[finished])
            corrupt = self.copy(finished, "corrupt-ckpt")
            tag = (corrupt / "checkpoints" / "latest").read_text().strip()
            flip_byte(corrupt / "checkpoints" / tag / "mp_rank_00_model_states.pt")
            self.bad("--resume from a corrupt checkpoint", self.pretrain(corrupt, "--resume"), keep=[corrupt])
            self.bad_model_inputs(finished / "final", new)
            lock_dir(finished)  # this process holds the lock, as a running job would
            self.bad("second run on the same --out", self.pretrain(finished, "--resume"), keep=[finished])
        for damage in ("truncate", "sha256", "vocab_size", "token_id", "malformed"):
            d = self.damaged_data(f"data-{damage}", damage)
            label = {"truncate": "truncated data shard", "flip": "data shard, one byte flipped",
                     "sha256": "meta.json sha256 edited", "vocab_size": "meta.json vocab_size edited",
                     "token_id": "token id >= vocab_size", "malformed": "malformed meta.json"}[damage]
            self.bad(label, self.pretrain(new(f"data-{damage}"), data=d), keep=[d])

    def bad_model_inputs(self, final, new):
        """Exported model folders damaged after export, read by each command that loads one; and a corpus root
        holding two BabyLM training sets."""
        cli = [PY, "-m", "babylm_ds.cli"]
        evaluate = [*cli, "eval", "--tasks", "blimp/adjunct_island", "--limit", "1", "--device", "cpu", "--model"]
        truncated = self.copy(final, "model-truncated")
        weights = truncated / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        self.bad("eval: model.safetensors truncated", [*evaluate, str(truncated)], keep=[truncated])
        self.bad("eval --no-verify: truncated weights (the library's error)",
                 [*evaluate, str(truncated), "--no-verify"], keep=[truncated])
        self.bad("cache_logits: teacher weights truncated", [PY, script("cache_logits.py"), "--data", str(self.data),
                                                             "--teachers", str(truncated), "--out", str(new("ttrunc"))],
                 keep=[truncated])
        edited = self.copy(final, "model-manifest-edited")
        manifest = json.loads((edited / "manifest.json").read_text())
        manifest["model.safetensors"]["sha256"] = "0" * 64
        (edited / "manifest.json").write_text(json.dumps(manifest, indent=2))
        self.bad("generate: manifest.json sha256 edited", [*cli, "generate", "--model", str(edited), "--prompt", "The",
                                                           "--device", "cpu"], keep=[edited])
        self.bad("distill --model: manifest.json sha256 edited",
                 self.distill(new("smanifest"), self.work / "ref-cache", "--model", str(edited)), keep=[edited])
        bare = self.copy(final, "model-no-manifest")
        (bare / "manifest.json").unlink()
        self.bad("eval: folder without manifest.json", [*evaluate, str(bare)], keep=[bare])
        root = self.work / "planted" / "babylm_data"
        for name in ("train_10M", "train_100M"):
            (root / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "data" / "corpus" / "switchboard" / "switchboard.txt.xz", root / name)
        self.bad("prepare: corpus root with train_10M/ and train_100M/",
                 [*cli, "prepare", "--corpus", str(root), "--out", str(new("two-train")), "--vocab-size", "300"])

    def bad_cache_inputs(self, new):
        ref_cache = self.work / "ref-cache"
        for damage in ("flip", "sha256", "missing", "k", "malformed", "fingerprint"):
            c = self.damaged_cache(f"cache-{damage}", damage)
            label = {"flip": "cache shard, one byte flipped", "sha256": "manifest sha256 edited",
                     "missing": "cache shard deleted", "k": "manifest k edited 8 -> 4",
                     "malformed": "malformed manifest.json", "fingerprint": "cache built for other data"}[damage]
            self.bad(label, self.distill(new(f"cache-{damage}"), c), keep=[c])
        other = self.work / "planted" / "teacher-600"
        from babylm_ds.models import build_model
        build_model("llama-tiny", vocab_size=600, **MICRO).save_pretrained(other)
        write_manifest(other)
        cache_cmd = [PY, script("cache_logits.py"), "--data", str(self.data), "--k", "8"]
        self.bad("teacher vocab != data vocab", [*cache_cmd, "--teachers", str(other), "--out", str(new("t600"))])
        self.bad("student vocab != data vocab", self.distill(new("s600"), ref_cache, "--model", str(other)),
                 keep=[ref_cache])
        other_tok = self.copy(self.teacher, "teacher-other-tokenizer")
        tok = json.loads((other_tok / "tokenizer.json").read_text())
        tok["model"]["merges"] = tok["model"]["merges"][:-1]
        (other_tok / "tokenizer.json").write_text(json.dumps(tok))
        write_manifest(other_tok)  # a consistent folder, exported with another tokenizer
        self.bad("teacher tokenizer != data tokenizer", [*cache_cmd, "--teachers", str(other_tok), "--out",
                                                          str(new("ttok"))])
        self.bad("cache_logits --k 4 into a finished k=8 cache",
                 [PY, script("cache_logits.py"), "--data", str(self.data), "--teachers", str(self.teacher), "--k", "4",
                  "--shard-size", "64", "--batch-size", "16", "--out", str(ref_cache)], keep=[ref_cache])
        self.bad("data shard flipped, 2 ranks", deepspeed("pretrain.py", *TRAIN, "--max-steps", "4", "--data",
                                                          str(self.damaged_data("data-flip2", "flip")),
                                                          "--out", str(new("flip2"))))

    def kernel_inputs(self):
        """The op's own checks, called in process: (exception type, message) for each bad input."""
        import torch

        from babylm_ds.ops import hgrn2
        def qkvg(B=1, T=8, H=2, K=4, V=4, dtype=torch.float32):
            q, k, g = (torch.randn(B, T, H, K, dtype=dtype) for _ in range(3))
            return q, k, torch.randn(B, T, H, V, dtype=dtype), -torch.rand(B, T, H, K, dtype=dtype)
        cases = {"wrong shape (3-D q)": lambda: hgrn2(*((x[0] if i == 0 else x) for i, x in enumerate(qkvg()))),
                 "v dtype differs": lambda: hgrn2(*[x.double() if i == 2 else x for i, x in enumerate(qkvg())]),
                 "integer tensors": lambda: hgrn2(*[x.long() for x in qkvg()]),
                 "state on meta device": lambda: hgrn2(*qkvg(), initial_state=torch.zeros(1, 2, 4, 4, device="meta")),
                 "g > 0": lambda: hgrn2(*qkvg()[:3], torch.rand(1, 8, 2, 4)),
                 "T = 0": lambda: hgrn2(*qkvg(T=0)),
                 "B = 0": lambda: hgrn2(*qkvg(B=0)), "K = 0": lambda: hgrn2(*qkvg(K=0)),
                 "V = 0": lambda: hgrn2(*qkvg(V=0))}
        for name, fn in cases.items():
            try:
                fn()
                row = {"input": f"kernel: {name}", "exit": None, "message": "accepted", "refused": False}
            except Exception as e:  # noqa: BLE001  the table records whatever the op raises
                row = {"input": f"kernel: {name}", "exit": None, "message": f"{type(e).__name__}: {e}"[:300],
                       "refused": "\n" not in str(e).strip()}
            row.update(one_line=row["refused"], trained=False, good_files_changed=False, seconds=0.0)
            self.results["bad_inputs"].append(row)

    # --- dead and hung ranks ------------------------------------------------------------------
    def ranks(self, timeout=20):
        """Rank 1 of a 2-rank pretrain dies, or hangs, after step 2: seconds from then (rank 0's step-2
        metrics line) until the job exited, vs --dist-timeout."""
        for mode in ("dead", "hang"):
            out = self.work / f"rank-{mode}"
            fault = "1:2" if mode == "dead" else "1:2:hang"
            rc, seconds, text = run(self.train_cmd("pretrain.py", out, "--dist-timeout", str(timeout)),
                                    self.log(f"rank-{mode}"), env={"BABYLM_DS_FAULT_AT_STEP": fault})
            after = time.time() - (out / "metrics.jsonl").stat().st_mtime
            lines = error_lines(text)
            self.results["ranks"].append({"rank 1": mode, "dist_timeout": timeout, "exit": rc,
                                          "seconds_to_exit": round(after, 1), "job_seconds": round(seconds, 1),
                                          "orphans": len(survivors(str(out))),
                                          "message": lines[-1][:300] if lines else ""})


def table(results):
    lines = ["| kill -9 trials | trials | killed | orphans | killed mid-save | resumed | corrupt | missing | "
             "duplicated | identical to reference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["kill"].items():
        t = r["trials"]
        same = sum(x.get("byte_identical", x.get("bit_identical", False)) for x in t)
        lines.append(f"| {name} | {len(t)} | {sum(x['killed'] for x in t)} | {sum(x['orphans'] for x in t)} | "
                     f"{sum(x.get('killed_mid_save', False) for x in t)} | {sum(x.get('resumed', False) for x in t)} | "
                     f"{sum(x.get('corrupt', 0) for x in t)} | {sum(x.get('missing', 0) for x in t)} | "
                     f"{sum(x.get('duplicated', 0) for x in t)} | {same}/{len(t)} |")
    lines += ["", "| planted bad input | exit | s | one line | trained | good files changed | message |",
              "|---|---|---|---|---|---|---|"]
    for r in results["bad_inputs"]:
        msg = r["message"].replace("|", "\\|")
        lines.append(f"| {r['input']} | {r['exit']} | {r['seconds']} | {'yes' if r['one_line'] else 'NO'} | "
                     f"{'YES' if r['trained'] else 'no'} | {'YES' if r['good_files_changed'] else 'no'} | {msg} |")
    if results["signals"]:
        lines += ["", "| signal trials | signal | trials | signalled | stopped after a step (signalled at -> saved) | "
                  "stopped while starting | launcher died before any rank | finished first | "
                  "2nd signal during the save | one line | steps lost | corrupt | orphans | resumed | "
                  "identical to reference |", "|" + "---|" * 15]
        for name, r in results["signals"].items():
            for sig in sorted({x["signal"] for x in r["trials"]}, key=lambda s: getattr(signal, s)):
                t = [{**x, "stopped": stop_kind(x)} for x in r["trials"] if x["signal"] == sig]
                count = lambda key, value=True, t=t: sum(x[key] == value for x in t)  # noqa: E731
                steps = ", ".join(f"{x['at_step']} -> {x['checkpoint_step']}" for x in t if x["stopped"] == "training")
                lines.append(f"| {name} | {sig} | {len(t)} | {count('signalled')} | {count('stopped', 'training')}"
                             f"{f' ({steps})' if steps else ''} | {count('stopped', 'starting')} | "
                             f"{count('stopped', 'launcher')} | {count('stopped', 'finished')} | "
                             f"{count('second_during_save')} | {count('one_line')}/"
                             f"{count('stopped', 'training') + count('stopped', 'starting')} | "
                             f"{sum(x['steps_lost'] for x in t)} | {sum(x['corrupt'] for x in t)} | "
                             f"{sum(x['orphans'] for x in t)} | {count('resumed')} | "
                             f"{count('bit_identical')}/{len(t)} |")
    if results["ranks"]:
        lines += ["", "| rank 1 after step 2 | --dist-timeout s | exit | seconds to exit after the fault | "
                  "whole job s | orphans | message |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['rank 1']} | {r['dist_timeout']} | {r['exit']} | {r['seconds_to_exit']} | "
                  f"{r.get('job_seconds', '')} | {r['orphans']} | {r.get('message', '')} |" for r in results["ranks"]]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 pretrain kill and 1 signal trial, cheap bad inputs only")
    p.add_argument("--cache-trials", type=int, default=20)
    p.add_argument("--pretrain-trials", type=int, default=20)
    p.add_argument("--distill-trials", type=int, default=10)
    p.add_argument("--pretrain-signal-trials", type=int, default=10)
    p.add_argument("--distill-signal-trials", type=int, default=6)
    parts = ("kill", "inputs", "ranks", "signals")
    p.add_argument("--parts", nargs="+", choices=parts, default=list(parts),
                   help="what to run (the references the planted inputs need are built without kill trials)")
    p.add_argument("--work", default=None, help="scratch dir (default: a temp dir, removed at the end)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.cache_trials, args.pretrain_trials, args.distill_trials = 0, 1, 0
        args.pretrain_signal_trials, args.distill_signal_trials = 1, 0
    work = Path(args.work or tempfile.mkdtemp(prefix="babylm-faults-"))
    shm = set(os.listdir("/dev/shm"))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # before this run writes its JSON
    suite, t0 = Suite(work, args.quick), time.time()
    if "kill" not in args.parts:
        args.cache_trials = args.pretrain_trials = args.distill_trials = 0
    if "signals" not in args.parts:
        args.pretrain_signal_trials = args.distill_signal_trials = 0
    inputs = "inputs" in args.parts
    phases = [suite.setup]
    if args.cache_trials or args.distill_trials or inputs and not args.quick:  # distill, cache inputs: its reference
        phases.append(lambda: suite.cache_trials(args.cache_trials))
    elif args.distill_signal_trials:
        phases.append(suite.cache_reference)
    if args.pretrain_trials or inputs:  # a finished reference run is a planted input
        phases.append(lambda: suite.train_trials("pretrain.py", args.pretrain_trials))
    if args.distill_trials:
        phases.append(lambda: suite.train_trials("distill.py", args.distill_trials))
    phases += [lambda name=name, n=n: suite.signal_trials(name, n)
               for name, n in (("pretrain.py", args.pretrain_signal_trials), ("distill.py", args.distill_signal_trials))
               if n]
    phases += ([suite.bad_inputs, suite.kernel_inputs] if inputs else []) + \
        ([suite.ranks] if "ranks" in args.parts and not args.quick else [])
    res = suite.results
    res["errors"] = []
    try:
        for phase in phases:
            try:
                phase()
            except Exception as e:  # noqa: BLE001  reported in the results (and the exit status); the rest still runs
                res["errors"].append(f"{type(e).__name__}: {e}"[:500])
                print(f"phase failed: {res['errors'][-1]}", flush=True)
                if phase is suite.setup:
                    break
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")  # partial results survive an interruption
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    res["summary"] = {
        "mode": "quick" if args.quick else "full", "parts": args.parts, "seconds": round(time.time() - t0),
        "commit": commit,
        "kill_trials": sum(len(r["trials"]) for r in res["kill"].values()),
        "kill_trials_not_identical": sum(not x.get("byte_identical", x.get("bit_identical", False))
                                         for r in res["kill"].values() for x in r["trials"]),
        "orphans": sum(x["orphans"] for r in [*res["kill"].values(), *res["signals"].values()] for x in r["trials"]),
        "signal_trials": sum(len(r["trials"]) for r in res["signals"].values()),
        "signal_trials_not_identical": sum(not x["bit_identical"]
                                           for r in res["signals"].values() for x in r["trials"]),
        "signal_steps_lost": sum(x["steps_lost"] for r in res["signals"].values() for x in r["trials"]),
        "signal_corrupt": sum(x["corrupt"] for r in res["signals"].values() for x in r["trials"]),
        "signal_without_one_line": sum(not x["one_line"] and stop_kind(x) in ("training", "starting", "unexplained")
                                       for r in res["signals"].values() for x in r["trials"]),
        "signal_unexplained": sum(stop_kind(x) == "unexplained" for r in res["signals"].values() for x in r["trials"]),
        "bad_inputs": len(res["bad_inputs"]), "bad_inputs_not_refused": [r["input"] for r in res["bad_inputs"]
                                                                         if not r["refused"]],
        "shm_leftovers": sorted(f for f in set(os.listdir("/dev/shm")) - shm
                                if f.startswith("deepspeed_allreduce") and any(f"_{p}_" in f for p in PORTS)),
    }
    print(table(res))
    print(json.dumps(res["summary"], indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

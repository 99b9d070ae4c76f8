"""Launcher jobs run as subprocesses: their command line and environment, and stamped stages that
skip outputs which verify, resume interrupted ones and redo changed ones (the pipeline and the study).

A stage's stamp (`STAMPS/NAME.json`) records the spec that made its outputs. Same spec and done:
skipped if the outputs verify. Same spec, not done: an interrupted run, resumed in place. Another
spec (or force): the outputs are removed and made again.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

from babylm_ds.models.manifest import verify_model_dir
from babylm_ds.training import preempt
from babylm_ds.utils.io import atomic_write_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What a job prints that the terminal does not show (all of it stays in its log): DeepSpeed's INFO/WARNING
# lines and op-loading chatter, torch's glog-style lines (the CUDA probe on a CPU machine), Python warnings
# with the source line printed under them.
NOISE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|WARNING|DEBUG)\] |Unable to find hostfile"
                   r"|[WI]\d{4} [\d:.]+ +\d+ \S+:\d+\] |DeepSpeed \S+ built successfully|Time to load \w+ op"
                   r"|Loading extension module|Emitting ninja build file|Allowing ninja to set"
                   r"|\[transformers\] `loss_type=None`|/[\w./-]+\.py:\d+: \w*Warning: ")


class JobError(ValueError):
    """A job failed or its output does not verify (one line, for the user)."""


class JobStopped(JobError):
    """A stop signal (SIGTERM, SIGUSR1) was passed on to the job, which saved and stopped (preempt.relay): the
    command says so in one line and exits preempt.EXIT_STOPPED (`utils.cli.run_cli`); rerunning it resumes."""
    exit_status = preempt.EXIT_STOPPED


def job_env(threads, device=None):
    """Environment of a launcher subprocess: no hub, `threads` OpenMP threads, the project on the path and
    its own compiled-op cache; `device` pins one GPU (CUDA_VISIBLE_DEVICES), None leaves them all visible."""
    import torch

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1",  # output may be relayed through a pipe: lines as they come
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".torch_extensions"))}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def launch_cmd(script, argv, world, launcher="deepspeed"):
    """The command running launchers/SCRIPT on `world` processes with `launcher` (python: one process)."""
    script = os.path.join(ROOT, "launchers", script)
    if launcher == "python":
        return [sys.executable, script, *argv]
    from babylm_ds.training.dist import free_port  # (imports deepspeed, which a `python` launch leaves to the job)

    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                "--master_port", str(free_port()), script, *argv]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(world),
            "--master_port", str(free_port()), script, *argv]


def relay(pipe, log, out):
    """Copy `pipe` (bytes) to the file `log` and, without NOISE, to the text stream `out`. Output is cut at
    \\n and \\r, so progress bars pass as they come; noise glued to a bar is cut off it."""
    rest, warning = b"", False
    while chunk := os.read(pipe.fileno(), 1 << 16):
        log.write(chunk)
        *lines, rest = re.split(rb"(?<=[\r\n])", rest + chunk)
        for line in lines:
            text = line.decode(errors="replace")
            if warning and text.startswith("  "):  # the source line Python prints under a warning
                warning = False
                continue
            if m := NOISE.search(text):
                warning, text = m.group().endswith("Warning: "), text[:m.start()].rstrip(" ")
            out.write(text)
            out.flush()
    if rest and not NOISE.search(text := rest.decode(errors="replace")):
        out.write(text + "\n")


def run_cmd(cmd, env, log, show=False):
    """Run `cmd` with its whole output appended to the file `log`; with `show`, the terminal gets it too,
    without NOISE. JobError on failure: the job's last `PROG: error: …` line, the log, the command. JobStopped
    when a stop signal came (preempt.relay): passed on to the job, or before it started (then it is not run)."""
    if signame := preempt.received():
        raise JobStopped(f"stopped by {signame} before the job of {os.path.basename(log)} started; "
                         "rerun the same command to resume")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    shown = os.path.relpath(log) if not os.path.relpath(log).startswith("..") else log
    print("$ " + " ".join(cmd) + f"\n  (full log: {shown})", flush=True)
    with open(log, "ab") as f:
        f.write((b"\n" if f.tell() else b"") + ("$ " + " ".join(cmd) + "\n").encode())  # after a killed job's \r
        f.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE if show else f,
                                stderr=subprocess.STDOUT)
        with preempt.job(proc):  # a stop signal reaches its ranks; then every process of it is waited for
            if show:
                relay(proc.stdout, f, sys.stdout)
            rc = proc.wait()
    if rc != 0:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 16)))
            lines = [x.strip() for x in f.read().decode(errors="replace").splitlines()]
        if signame := preempt.received():
            said = [x for x in lines if ": stopped by " in x]
            raise JobStopped(f"stopped by {signame} ({said[-1] if said else f'exit {rc}'}; see {log}); "
                             "rerun the same command to resume")
        said = [x for x in lines if ": error: " in x]
        raise JobError(f"{said[-1] + ' — ' if said else ''}command failed (exit {rc}; see {log}): {' '.join(cmd)}")


def verify_run(run_dir, steps):
    """A training run is done when final/ matches its manifest and summary.json has the wanted steps."""
    verify_model_dir(os.path.join(run_dir, "final"))
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    if summary["steps"] != steps:
        raise ValueError(f"{run_dir} trained {summary['steps']} steps, want {steps}")


def run_stage(stamp_path, spec, outputs, verify, run, force=False):
    """Run `run(resume)` unless `outputs` verify and were made by the same `spec`; returns the seconds
    it took, or None when skipped. `verify()` raises OSError/ValueError/KeyError on bad outputs."""
    name = os.path.splitext(os.path.basename(stamp_path))[0]
    stamp = {}
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            stamp = json.load(f)
    same = stamp.get("spec") == spec and not force
    if same and stamp.get("done"):
        try:
            verify()
            print(f"[{name}] up to date, skipped", flush=True)
            return None
        except (OSError, ValueError, KeyError) as e:
            print(f"[{name}] output does not verify ({e}); redoing", flush=True)
    if not same:
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
    atomic_write_json(stamp_path, {"spec": spec, "done": False})
    print(f"[{name}] {'resuming' if same else 'running'}", flush=True)
    t0 = time.time()
    run(same)
    try:
        verify()
    except (OSError, ValueError, KeyError) as e:
        raise JobError(f"stage {name} finished but its output does not verify: {e}") from None
    seconds = round(time.time() - t0, 1)
    atomic_write_json(stamp_path, {"spec": spec, "done": True, "seconds": seconds})
    return seconds

"""Preemption and verified reads: SIGTERM/SIGUSR1 make every rank save the same step and stop (exit 75, one
line) and --resume continues bit for bit; cache_logits stops at a shard boundary; the pipeline passes a stop on
and resumes; the SLURM script forwards the warning signal and requeues; model folders are checked against
their manifest.json before any library reads them; `prepare` refuses a corpus root with several train_*
folders."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from babylm_ds.training import preempt
from babylm_ds.training.dist import free_port
from babylm_ds.training.guard import verify_checkpoint
from launch import HANG_S, LAUNCH_ENV, ROOT, read_metrics

PY = sys.executable
TINY = ["--model", "llama-tiny", "--model-config", "hidden_size=32", "num_hidden_layers=1", "intermediate_size=64",
        "num_attention_heads=2", "num_key_value_heads=2", "--micro-batch", "4", "--lr", "3e-3", "--warmup-steps", "2",
        "--log-every", "1", "--dev-max-seqs", "8", "--dist-timeout", "60"]


def launcher(kind):
    return {"python": [PY],
            "torchrun": [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())],
            "deepspeed": [PY, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                          str(free_port())]}[kind]


def start(cmd, log, env=None):
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, **LAUNCH_ENV, **(env or {})})


def finish(proc, log):
    try:
        return proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"timed out:\n{Path(log).read_text()[-3000:]}") from None


def train(kind, out, *extra, env=None, script="pretrain.py"):
    """Run a launcher to its end; returns (exit code, its log text)."""
    log = f"{out}.{len(list(Path(out).parent.glob(Path(out).name + '.*log')))}.log"
    rc = finish(start([*launcher(kind), str(ROOT / "launchers" / script), *extra, "--out", str(out)], log, env), log)
    return rc, Path(log).read_text(errors="replace")


def stopped_lines(text):
    return [x.strip() for x in text.splitlines() if ": stopped by " in x]


def metrics(out):
    """Every row of metrics.jsonl but the timing."""
    return [{k: v for k, v in json.loads(x).items() if k != "train/tokens_per_s"}
            for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def wait_for_step(out, step, proc):
    while proc.poll() is None:
        rows = (Path(out) / "metrics.jsonl").read_text().splitlines() if (Path(out) / "metrics.jsonl").exists() else []
        if any(json.loads(x)["step"] >= step for x in rows):
            return
        time.sleep(0.02)


def gone(tag, timeout=60):
    """True once no process mentions `tag` (a run's --out) in its command line."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and _mentions(p, tag)]:
            return True
        time.sleep(0.2)
    return False


def _mentions(pid, tag):
    try:
        return tag.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# --- stop signals: ranks --------------------------------------------------------------------------
@pytest.mark.slow
def test_signal_on_one_rank_stops_all_at_the_same_step_and_resume_is_exact(tiny_data_dir, tmp_path):
    """SIGUSR1 raised on rank 1 only after step 6 (deepspeed launcher): both ranks save step6 and stop, the
    launcher exits 75 with one line; --resume under torchrun reproduces the uninterrupted run's metrics
    (train and dev losses) bit for bit."""
    common = [*TINY, "--data", str(tiny_data_dir), "--max-steps", "10", "--save-every", "4", "--eval-every", "5",
              "--ds_config", str(ROOT / "ds_configs/zero2.json")]
    ref, run = tmp_path / "ref", tmp_path / "run"
    rc, text = train("deepspeed", ref, *common)
    assert rc == 0, text[-3000:]
    rc, text = train("deepspeed", run, *common, env={preempt.SIGNAL_ENV: "1:6:SIGUSR1"})
    assert rc == preempt.EXIT_STOPPED, text[-3000:]
    assert stopped_lines(text) == [f"pretrain.py: stopped by SIGUSR1 at step 6; checkpoint step6 saved in "
                                   f"{run}/checkpoints; rerun with --resume"]
    assert verify_checkpoint(run / "checkpoints") == "step6" and max(read_metrics(run, "train/loss")) == 6
    assert not (run / "final").exists() and gone(str(run))
    rc, text = train("torchrun", run, *common, "--resume")
    assert rc == 0, text[-3000:]
    assert metrics(run) == metrics(ref)


@pytest.mark.slow
def test_sigterm_to_the_deepspeed_runner_alone_reaches_the_ranks(tiny_data_dir, tmp_path):
    """DeepSpeed's runner passes no signal on (one node); killed alone by SIGTERM, its ranks notice within a
    second, finish the step, save it and stop: no step is lost, nothing outlives the job."""
    out = tmp_path / "run"
    proc = start([*launcher("deepspeed"), str(ROOT / "launchers" / "pretrain.py"), *TINY, "--data",
                  str(tiny_data_dir), "--max-steps", "400", "--out", str(out)], f"{out}.log")
    wait_for_step(out, 3, proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc, f"{out}.log") == -signal.SIGTERM
    assert gone(str(out))
    [line] = stopped_lines(Path(f"{out}.log").read_text())
    step = max(read_metrics(out, "train/loss"))
    assert 3 <= step < 400 and line.startswith(f"pretrain.py: stopped by SIGTERM at step {step}; checkpoint step{step}")
    assert verify_checkpoint(out / "checkpoints") == f"step{step}"


def test_stop_on_signal_callback_saves_through_the_checkpoint_then_stops(monkeypatch):
    """The Trainer's StopOnSignal (last of the default callbacks, after Checkpoint): asked once per step end
    (a collective), a stop on any rank ends the loop; at the train end Checkpoint saves that step once and
    then the process stops with the line naming it; a run stopped for another reason is left alone."""
    from types import SimpleNamespace

    from babylm_ds.config import parse
    from babylm_ds.training.callbacks import Checkpoint, StopOnSignal, TrainState, default_callbacks

    cfg = parse("pretrain", ["--model", "m", "--data", "d", "--out", "o", "--save-every", "2"])
    names = [type(c).__name__ for c in default_callbacks(cfg)]
    assert names[-2:] == ["Checkpoint", "StopOnSignal"]
    calls = []
    monkeypatch.setattr(preempt, "requested",
                        lambda step: calls.append(("asked", step)) or ("SIGUSR1" if step == 3 else None))
    monkeypatch.setattr(preempt, "stop", lambda *a: calls.append(("stop", *a)))
    t = SimpleNamespace(rank=0, tb=None, ckpt_dir="OUT/checkpoints", save=lambda step: calls.append(("save", step)))
    callbacks, s = [Checkpoint(2), StopOnSignal()], TrainState()
    for hook in ["on_train_start", *["on_step_end"] * 5, "on_train_end"]:
        if hook == "on_step_end":
            if s.stop is not None:
                continue
            s.step += 1
        for c in callbacks:
            getattr(c, hook)(t, s)
    saved = "at step 3; checkpoint step3 saved in OUT/checkpoints; rerun with --resume"
    assert calls == [("asked", 1), ("save", 2), ("asked", 2), ("asked", 3), ("save", 3), ("stop", "SIGUSR1", saved, 0)]
    calls.clear()
    s.stop = "stop requested"
    StopOnSignal().on_train_end(t, s)
    assert calls == []


def test_signal_while_starting_exits_at_once_with_one_line(tiny_data_dir, tmp_path):
    """Before the first step there is nothing to save: exit 75 with one line (also when the signal came while
    Python was still importing torch)."""
    out = tmp_path / "run"
    proc = start([PY, str(ROOT / "launchers" / "pretrain.py"), *TINY, "--data", str(tiny_data_dir), "--max-steps", "5",
                  "--out", str(out)], f"{out}.log")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, f"{out}.log") == preempt.EXIT_STOPPED
    text = Path(f"{out}.log").read_text()
    assert stopped_lines(text) == ["pretrain.py: stopped by SIGTERM while starting, before any step; nothing to save; "
                                   "rerun the same command"] and "Traceback" not in text
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.slow
def test_stop_at_an_epoch_end_redoes_its_evaluation_on_resume(tiny_data_dir, tmp_path):
    """A checkpoint at an epoch's last step is written before that epoch's dev and zero-shot evaluation: a run
    stopped there and resumed writes the same metrics rows as an uninterrupted one (8 steps per epoch)."""
    common = [*TINY, "--data", str(tiny_data_dir), "--micro-batch", "128", "--max-steps", "12", "--eval-zeroshot",
              "blimp", "--eval-limit", "1"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    rc, text = train("python", ref, *common)
    assert rc == 0, text[-3000:]
    rc, text = train("python", run, *common, env={preempt.SIGNAL_ENV: "0:8"})
    assert rc == preempt.EXIT_STOPPED and stopped_lines(text)[0].endswith("rerun with --resume"), text[-3000:]
    assert not [r for r in metrics(run) if "zeroshot/blimp" in r]  # stopped before the epoch-end evaluation
    rc, text = train("python", run, *common, "--resume")
    assert rc == 0, text[-3000:]
    assert metrics(run) == metrics(ref) and [r["step"] for r in metrics(ref) if "zeroshot/blimp" in r] == [8]


@pytest.mark.slow
def test_cache_logits_stops_at_a_shard_boundary_and_resumes_byte_identical(tiny_data_dir, tmp_path):
    from babylm_ds.models import build_model
    from babylm_ds.models.manifest import write_manifest
    from test_cache import tree

    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    build_model("llama-tiny", vocab_size=1000, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                num_attention_heads=2, num_key_value_heads=2).save_pretrained(teacher)
    write_manifest(teacher)
    argv = ["--data", str(tiny_data_dir), "--teachers", str(teacher), "--k", "8", "--shard-size", "128",
            "--batch-size", "32", "--kl-sample", "4"]
    ref, cache = tmp_path / "ref", tmp_path / "cache"
    rc, text = train("python", ref, *argv, script="cache_logits.py")
    assert rc == 0, text[-3000:]
    rc, text = train("torchrun", cache, *argv, script="cache_logits.py", env={preempt.SIGNAL_ENV: "1:4"})
    assert rc != 0 and stopped_lines(text) == [
        "cache_logits.py: stopped by SIGTERM at a shard boundary; 4 of 9 shards written and kept; "
        "rerun the same command to resume"], text[-3000:]
    assert not (cache / "manifest.json").exists() and len(list((cache / "shards").glob("*.bin"))) == 4
    rc, text = train("torchrun", cache, *argv, script="cache_logits.py")
    assert rc == 0 and "cache shards: 2 verified and kept" in text, text[-3000:]
    assert tree(cache) == tree(ref)


# --- stop signals: jobs run by the pipeline or a study, and SLURM ---------------------------------
@pytest.mark.slow
def test_pipeline_passes_sigterm_to_its_job_and_resumes(tmp_path):
    """SIGTERM to the pipeline process alone (the demo study), while its teacher trains (torchrun, 2 ranks): the
    ranks save and stop, the pipeline waits for them, starts nothing more, says so in one line and exits 75;
    rerunning it resumes the teacher."""
    out = tmp_path / "pipe"
    cmd = [PY, str(ROOT / "launchers" / "pipeline.py"), "--out", str(out), "--max-words", "20000",
           "--vocab-size", "500", "--seq-len", "32", "--teachers", "llama-tiny", "--teacher-steps", "60",
           "--student", "llama-tiny", "--steps", "2", "--micro-batch", "4", "--launcher", "torchrun",
           "--stages", "prepare,train"]
    run_dir = out / "runs" / "teacher-lr0.003-s0"
    proc = start(cmd, tmp_path / "pipe.log")
    wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, tmp_path / "pipe.log") == preempt.EXIT_STOPPED
    assert gone(str(run_dir), timeout=1)  # the pipeline waited for every process of its job
    last = Path(tmp_path / "pipe.log").read_text().strip().splitlines()[-1]
    step = max(read_metrics(run_dir, "train/loss"))
    assert not (out / "runs" / "student-lr0.003-s0").exists()  # the next job was not started
    assert last.startswith(f"pipeline.py: stopped by SIGTERM (pretrain.py: stopped by SIGTERM at step {step}; "
                           f"checkpoint step{step} saved") and last.endswith("rerun the same command to resume")
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{step}" and step < 60
    rc = finish(start(cmd, tmp_path / "pipe2.log"), tmp_path / "pipe2.log")
    assert rc == 0, Path(tmp_path / "pipe2.log").read_text()[-3000:]
    cmds = [x for x in (out / "logs" / "teacher-lr0.003-s0.log").read_text().splitlines() if x.startswith("$ ")]
    assert len(cmds) == 2 and cmds[1].endswith("--resume")
    assert sorted(read_metrics(run_dir, "train/loss")) == list(range(1, 61))


FAKE_SRUN = '''#!{py}
"""srun for one node: start --ntasks-per-node tasks with SLURM_PROCID/LOCALID/NTASKS, pass SIGTERM/SIGUSR1/SIGINT
on to them (as srun does), return the highest exit code (128 + signal for a signalled task)."""
import os, signal, subprocess, sys
args, n = sys.argv[1:], 1
while args[0].startswith("-"):
    a = args.pop(0)
    n = int(a.split("=")[1]) if a.startswith("--ntasks-per-node=") else n
with open(os.environ["FAKE_SLURM_LOG"], "a") as f:
    f.write("srun " + " ".join(sys.argv[1:]) + "\\n")
tasks = [subprocess.Popen(args, env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                                      "SLURM_NTASKS": str(n)}}) for i in range(n)]
for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
    signal.signal(s, lambda signum, _: [t.send_signal(signum) for t in tasks if t.poll() is None])
codes = [t.wait() for t in tasks]
sys.exit(max(128 - c if c < 0 else c for c in codes))
'''
FAKE_SCONTROL = '''#!/bin/bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
[ "$1" = show ] && echo 127.0.0.1
exit 0
'''


@pytest.mark.slow
def test_slurm_script_forwards_the_warning_signal_and_requeues(tiny_data_dir, tmp_path):
    """scripts/slurm_pretrain.sh with a fake srun and scontrol on PATH: SLURM's SIGUSR1 to the batch script
    reaches both ranks through srun, they save and stop, the script requeues the job; the requeued job
    resumes (--resume) and finishes, and is not requeued again."""
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm.log"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN.format(py=PY)), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    out = tmp_path / "run"
    env = {"PATH": f"{bin_dir}:{os.path.dirname(PY)}:{os.environ['PATH']}", "FAKE_SLURM_LOG": str(log),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node-001", "SLURM_NNODES": "1", "SLURM_SUBMIT_DIR": str(ROOT),
           "GPUS_PER_NODE": "2", "MASTER_PORT": str(free_port())}
    job = ["bash", str(ROOT / "scripts" / "slurm_pretrain.sh"), *TINY, "--data", str(tiny_data_dir), "--max-steps",
           "300", "--save-every", "50", "--out", str(out)]
    proc = start(job, tmp_path / "job1.log", env)
    wait_for_step(out, 3, proc)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
    assert finish(proc, tmp_path / "job1.log") == preempt.EXIT_STOPPED
    text = (tmp_path / "job1.log").read_text()
    step = max(read_metrics(out, "train/loss"))
    assert stopped_lines(text)[0].startswith(f"pretrain.py: stopped by SIGUSR1 at step {step}; checkpoint step{step}")
    assert verify_checkpoint(out / "checkpoints") == f"step{step}" and step < 300
    assert log.read_text().splitlines()[-1] == "scontrol requeue 4242"
    env["MASTER_PORT"] = str(free_port())
    rc = finish(start(job, tmp_path / "job2.log", env), tmp_path / "job2.log")  # the requeued job
    assert rc == 0, (tmp_path / "job2.log").read_text()[-3000:]
    calls = log.read_text().splitlines()
    assert [c for c in calls if "requeue" in c] == ["scontrol requeue 4242"]
    sruns = [c for c in calls if c.startswith("srun ")]
    assert len(sruns) == 2 and "--resume" not in sruns[0] and " --resume " in sruns[1]
    assert sorted(read_metrics(out, "train/loss")) == list(range(1, 301))


JOB = """import signal, sys, time
def stop(signum, _):
    print("job.py: stopped by SIGTERM at step 3; checkpoint step3 saved; rerun with --resume",
          file=sys.stderr, flush=True)
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(600)
"""
RUNNER = """import os, sys
from babylm_ds.training import preempt
from babylm_ds.training.jobs import JobStopped, run_cmd
preempt.relay()
wrapper = [sys.executable, "-c",
           "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-u', sys.argv[1]]))", sys.argv[1]]
for _ in range(2):
    try:
        run_cmd(wrapper, dict(os.environ), sys.argv[2])
    except JobStopped as e:
        print(e, flush=True)
"""


def test_job_runner_passes_a_stop_to_the_rank_and_starts_nothing_more(tmp_path):
    """A process running jobs (training.jobs.run_cmd under preempt.relay) gets SIGTERM: the job's rank (a
    launchers/*.py process) gets it, its wrapper does not (it returns the rank's 75), the stop is reported
    with the rank's line, and the next job is not started."""
    (tmp_path / "launchers").mkdir()
    (tmp_path / "launchers" / "job.py").write_text(JOB)
    log = tmp_path / "logs" / "job.log"
    proc = subprocess.Popen([PY, "-c", RUNNER, str(tmp_path / "launchers" / "job.py"), str(log)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    while not (log.exists() and "ready" in log.read_text()):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=HANG_S)
    said = [x for x in out.splitlines() if not x.startswith(("$ ", "  (full log"))]  # run_cmd's own lines
    assert said == [f"stopped by SIGTERM (job.py: stopped by SIGTERM at step 3; checkpoint step3 saved; rerun with "
                    f"--resume; see {log}); rerun the same command to resume",
                    "stopped by SIGTERM before the job of job.log started; rerun the same command to resume"]
    assert log.read_text().count("$ ") == 1


def test_a_stopped_job_is_one_line_and_exit_75(capsys):
    """A command whose job was stopped (JobStopped, e.g. the study's or the demo's) says so without "error:" and
    exits 75; other job errors stay exit 1."""
    from babylm_ds.training.jobs import JobError, JobStopped
    from babylm_ds.utils.cli import run_cli

    def stopped(_argv):
        raise JobStopped("stopped by SIGTERM (pretrain.py: stopped by SIGTERM at step 3; …); rerun the same command")

    assert run_cli(stopped, [], prog="babylm-ds study") == preempt.EXIT_STOPPED
    assert capsys.readouterr().err == ("babylm-ds study: stopped by SIGTERM (pretrain.py: stopped by SIGTERM "
                                       "at step 3; …); rerun the same command\n")
    assert run_cli(lambda _argv: (_ for _ in ()).throw(JobError("failed")), [], prog="p") == 1
    assert capsys.readouterr().err == "p: error: failed\n"


def test_relay_passes_signals_to_ranks_not_to_launcher_wrappers():
    class Proc:
        def __init__(self, *cmd):
            self.cmd = list(cmd)

        def cmdline(self):
            return self.cmd

    rank = [Proc(PY, "-u", "/x/launchers/pretrain.py", "--out", "o"), Proc(PY, "/x/launchers/evaluate.py")]
    wrappers = [Proc(PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "/x/launchers/pretrain.py"),
                Proc(PY, "-u", "-m", "deepspeed.launcher.launch", "--world_info=e30=", "/x/launchers/pretrain.py"),
                Proc(PY, "/venv/bin/deepspeed", "/x/launchers/pretrain.py"), Proc(PY, "-c", "/x/launchers/a.py")]
    assert [preempt._is_rank(p) for p in rank + wrappers] == [True, True, False, False, False, False]
    assert [preempt._is_launcher(p.cmdline()) for p in wrappers[:3] + rank] == [True, True, True, False, False]


# --- model folders are verified before they are read ----------------------------------------------
@pytest.fixture
def exported(tiny_data_dir, tmp_path):
    from babylm_ds.data import load_tokenizer
    from babylm_ds.models import build_model
    from babylm_ds.training.trainer import export_hf

    torch.manual_seed(0)
    model = build_model("llama-tiny", vocab_size=1000, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                        num_attention_heads=2, num_key_value_heads=2)
    export_hf(model, model.state_dict(), load_tokenizer(tiny_data_dir), str(tmp_path / "final"))
    return tmp_path / "final"


def _copy(src, name, damage):
    """A copy of the exported folder `src` as RUN/final, with `damage` done to it."""
    dst = src.parent / name / "final"
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    if damage == "truncate":
        (dst / "model.safetensors").write_bytes((dst / "model.safetensors").read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray((dst / "model.safetensors").read_bytes())
        data[len(data) // 2] ^= 1
        (dst / "model.safetensors").write_bytes(bytes(data))
    elif damage == "edit":
        manifest["model.safetensors"]["sha256"] = "0" * 64
    elif damage == "size":
        manifest["model.safetensors"]["size"] += 1
    elif damage == "missing":
        (dst / "tokenizer.json").unlink()
    elif damage == "unlisted":
        (dst / "pytorch_model.bin").write_bytes(b"x")
    elif damage == "no-manifest":
        (dst / "manifest.json").unlink()
    elif damage == "old-format":
        manifest = {k: v["sha256"] for k, v in manifest.items()}
    if damage in ("edit", "size", "old-format"):
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("damage,msg", [
    ("truncate", r"model.safetensors has [\d,]+ bytes, manifest.json lists [\d,]+ \(truncated or replaced\)"),
    ("flip", "model.safetensors does not match its sha256 in manifest.json \\(corrupted"),
    ("edit", "model.safetensors does not match its sha256 in manifest.json"),
    ("size", "model.safetensors has .* bytes, manifest.json lists"),
    ("missing", "tokenizer.json is missing \\(listed in manifest.json\\)"),
    ("unlisted", "pytorch_model.bin is not listed in manifest.json .*--no-verify"),
    ("no-manifest", "has no manifest.json, so its files cannot be verified .*pass --no-verify")])
def test_damaged_model_folder_is_refused_by_every_reader(exported, tiny_data_dir, damage, msg):
    from babylm_ds.cache import check_teacher
    from babylm_ds.data import load_meta
    from babylm_ds.evaluation import load_model
    from babylm_ds.evaluation.load import load_classifier
    from babylm_ds.models import check_model_arg
    from babylm_ds.training.jobs import verify_run

    bad = _copy(exported, f"bad-{damage}", damage)
    for read in (lambda: load_model(bad), lambda: check_teacher(str(bad), load_meta(tiny_data_dir)),
                 lambda: check_model_arg(str(bad), 1000, {}, verify=True), lambda: verify_run(bad.parent, 0),
                 lambda: load_classifier(bad, 2)):
        with pytest.raises(ValueError, match=msg) as e:
            read()
        assert "\n" not in str(e.value)
    if damage in ("flip", "edit", "size", "unlisted", "no-manifest"):  # readable files: --no-verify loads them
        load_model(bad, verify=False)


def test_model_folder_checks_pass_and_library_errors_are_one_line(exported, capsys):
    from babylm_ds import cli
    from babylm_ds.evaluation import load_model

    model, tokenizer = load_model(exported)
    assert model.config.vocab_size == 1000 and len(tokenizer) == 1000
    load_model(_copy(exported, "old", "old-format"))  # exports before sizes were listed: sha256 only
    (exported / "README.md").write_text("card edited by `babylm-ds eval`")  # not part of the model: ignored
    load_model(exported)
    bad = _copy(exported, "bad", "truncate")
    capsys.readouterr()
    assert cli.main(["generate", "--model", str(bad), "--prompt", "a"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("babylm-ds generate: error: ") and "truncated or replaced" in err[0]
    assert cli.main(["generate", "--model", str(bad), "--prompt", "a", "--no-verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"babylm-ds generate: error: cannot load the model in {bad}: ")


def test_prepare_refuses_a_corpus_root_with_several_training_sets(tmp_path, capsys):
    from babylm_ds import cli
    from babylm_ds.data.corpus import list_files

    root = tmp_path / "babylm_data"
    for name in ("train_10M", "train_100M", "dev"):
        (root / name).mkdir(parents=True)
        (root / name / f"childes.{'dev' if name == 'dev' else 'train'}").write_text("hello there\n")
    assert cli.main(["prepare", "--corpus", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"babylm-ds prepare: error: corpus directory {root} holds several training sets (train_100M, "
                   f"train_10M); pass one of them, e.g. --corpus {root}/train_100M"]
    assert not (tmp_path / "out").exists()
    assert list_files(root / "train_10M") == [root / "train_10M" / "childes.train"]
    shutil.rmtree(root / "train_100M")
    assert list_files(root) == [root / "train_10M" / "childes.train"]

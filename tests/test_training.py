"""DeepSpeed training: schedule, sampler, config checks, and multi-process ZeRO runs on CPU (gloo)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from babylm_ds.config import parse
from babylm_ds.training.config import build_ds_config
from babylm_ds.training.dist import free_port
from babylm_ds.training.sampler import ResumableSampler
from babylm_ds.training.schedule import build_scheduler, lr_factor
from launch import HANG_S, LAUNCH_ENV, ROOT, read_metrics

PRETRAIN = str(ROOT / "launchers" / "pretrain.py")
TINY = ["--model", "llama-tiny", "--model-config", "num_hidden_layers=2", "--micro-batch", "4", "--lr", "3e-3",
        "--warmup-steps", "2", "--dist-timeout", "60", "--log-every", "1"]
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def _cfg(*argv):
    return parse("pretrain", ["--model", "m", "--data", "d", "--out", "o", *argv])


def _start(launcher, out, *extra, env=None, log=None):
    """Start `launcher ... pretrain.py` on the tiny model, logging to `log` (default OUT.log)."""
    env = {**os.environ, **LAUNCH_ENV, **(env or {})}
    with open(log or f"{out}.log", "w") as f:
        return subprocess.Popen([*launcher, PRETRAIN, *TINY, "--out", str(out), *extra], stdout=f,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def _finish(proc, log, timeout=HANG_S):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it spawned
        raise AssertionError(f"timed out after {timeout}s:\n{Path(log).read_text()[-3000:]}") from None


def _launch(launcher, out, *extra, timeout=HANG_S, env=None):
    """Run to completion on a free port; returns (exit code, seconds)."""
    t0 = time.time()
    rc = _finish(_start([*launcher, "--master_port", str(free_port())], out, *extra, env=env), f"{out}.log", timeout)
    return rc, time.time() - t0


def _ok(rc, out):
    assert rc == 0, Path(f"{out}.log").read_text()[-4000:]


def _dev_loss(model, data):
    """Independent reference: mean next-token CE of `model` over every dev window."""
    from babylm_ds.data import PackedDataset
    ds = PackedDataset(data, "dev")
    ids = torch.stack([ds[i]["input_ids"] for i in range(len(ds))])
    with torch.no_grad():
        logits = model(ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()


def _check_export(out, data):
    """final/ reloads via AutoModelForCausalLM, equals DeepSpeed's own zero_to_fp32 consolidation of the
    last checkpoint (identical logits) and reproduces the engine's final dev loss."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    import babylm_ds.models  # noqa: F401
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    ref = AutoModelForCausalLM.from_config(model.config).eval()
    missing, unexpected = ref.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints")),
                                              strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    summary = json.loads((out / "summary.json").read_text())
    assert _dev_loss(model, data) == pytest.approx(summary["dev_loss"], rel=1e-5)
    assert (out / "final" / "tokenizer.json").is_file() and (out / "final" / "manifest.json").is_file()
    return summary


def test_lr_schedule_matches_formula():
    total, warm, ratio, lr = 20, 4, 0.1, 1e-3
    for kind in ("cosine", "linear", "constant"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched = build_scheduler(opt, total, warm, kind, ratio)
        for step in range(total + 2):
            p = min(1.0, max(0, step - warm) / (total - warm))
            decay = {"cosine": (1 + math.cos(math.pi * p)) / 2, "linear": 1 - p, "constant": 1.0}[kind]
            after = decay if kind == "constant" else ratio + (1 - ratio) * decay
            want = lr * (step + 1) / warm if step < warm else lr * after
            assert opt.param_groups[0]["lr"] == pytest.approx(want), (kind, step)
            assert lr_factor(step, total, warm, kind, ratio) * lr == pytest.approx(want)
            opt.step()
            sched.step()
    with pytest.raises(ValueError, match="min-lr-ratio"):
        build_scheduler(opt, total, warm, "cosine", 1.5)


def test_sampler_positions_resume_and_shard():
    data = list(range(103))
    full = {r: list(ResumableSampler(data, 2, r, seed=3)) for r in (0, 1)}
    assert len(full[0]) == len(full[1]) == 51 and not set(full[0]) & set(full[1])
    s = ResumableSampler(data, 2, 1, seed=3)
    s.set_position(0, 20)
    assert list(s) == full[1][20:] and len(s) == 31
    s.set_position(1, 0)
    epoch1 = list(s)
    assert epoch1 != full[1]  # reshuffled each epoch
    s.set_position(1, 7)
    assert list(s) == epoch1[7:]


def test_ds_config_overrides_and_errors(tmp_path):
    cfg = build_ds_config(_cfg("--ds_config", str(ROOT / "ds_configs/zero2.json"), "--micro-batch", "3",
                                "--grad-accum", "2", "--bf16", "--clip", "0.5"), world_size=4)
    sizes = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]
    assert sizes == (3, 2, 24)
    assert cfg["bf16"]["enabled"] and cfg["gradient_clipping"] == 0.5 and cfg["zero_optimization"]["stage"] == 2
    cfg = build_ds_config(_cfg("--ds_config", str(ROOT / "ds_configs/zero3_offload.json"), "--lr", "0.01"), 2)
    assert cfg["optimizer"]["params"]["lr"] == 0.01 and cfg["train_batch_size"] == 16  # micro 8 from the JSON
    for name in ("zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"):
        assert "auto" not in (ROOT / f"ds_configs/{name}.json").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match=r"train_batch_size=999 .* = 16"):
        build_ds_config(_cfg("--ds_config", str(bad), "--micro-batch", "4", "--grad-accum", "2"), 2)
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}))
    with pytest.raises(ValueError, match="zero_optimization.reduce_bucket_size"):
        build_ds_config(_cfg("--ds_config", str(bad)), 1)
    bad.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ValueError, match="scheduler"):
        build_ds_config(_cfg("--ds_config", str(bad)), 1)


def test_cli_batch_size_mismatch_is_one_line_error(tiny_data_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 1}}))
    out = tmp_path / "run"
    proc = _start([sys.executable], out, "--data", str(tiny_data_dir), "--ds_config", str(bad))
    assert _finish(proc, f"{out}.log") != 0
    log = Path(f"{out}.log").read_text()
    assert "error: train_batch_size=999" in log and "Traceback" not in log


@pytest.mark.slow
def test_zero2_kill_and_resume_is_exact(tiny_data_dir, tmp_path):
    """ZeRO-2, 2 ranks (deepspeed launcher): loss falls and final/ is right. The same run under torchrun
    with rank 1 stalled after step 6 exits with an error in bounded time (--dist-timeout 20), and
    --resume from its step-4 checkpoint reproduces the uninterrupted per-step losses and dev losses."""
    common = ["--data", str(tiny_data_dir), "--ds_config", str(ROOT / "ds_configs/zero2.json"),
              "--max-steps", "8", "--save-every", "4", "--eval-every", "4", "--grad-accum", "2"]
    full, crash = tmp_path / "full", tmp_path / "crash"
    _ok(_launch(DEEPSPEED, full, *common)[0], full)
    losses = read_metrics(full, "train/loss")
    assert sorted(losses) == list(range(1, 9))
    assert sum(list(losses.values())[-2:]) < sum(list(losses.values())[:2]) - 0.5
    _check_export(full, tiny_data_dir)

    rc, _ = _launch(TORCHRUN, crash, *common, "--dist-timeout", "20", env={"BABYLM_DS_FAULT_AT_STEP": "1:6:hang"})
    assert rc != 0
    assert "made no progress for 20s" in Path(f"{crash}.log").read_text()
    assert (crash / "checkpoints" / "latest").read_text().strip() == "step4"
    assert max(read_metrics(crash, "train/loss")) == 6  # rank 1 stalled once 6 steps were done
    _ok(_launch(TORCHRUN, crash, *common, "--resume")[0], crash)
    assert read_metrics(crash, "train/loss") == losses  # steps 5..8 bit-identical (1..4 kept from before the crash)
    assert read_metrics(crash, "dev/loss") == read_metrics(full, "dev/loss")


@pytest.mark.slow
def test_zero3_two_nodes_without_ssh(tiny_data_dir, tmp_path):
    """Two deepspeed launcher calls (--no_ssh, node ranks 0/1, master 127.0.0.1) form one ZeRO-3 job;
    the gathered final/ model matches DeepSpeed's own consolidation and the engine's dev loss."""
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    out, port = tmp_path / "2node", free_port()
    runs = [_start([sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hosts), "--no_ssh",
                    "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port)],
                   out, "--data", str(tiny_data_dir), "--ds_config", str(ROOT / "ds_configs/zero3.json"),
                   "--max-steps", "8", log=f"{out}-node{node}.log") for node in (0, 1)]
    for node, run in enumerate(runs):
        log = f"{out}-node{node}.log"
        assert _finish(run, log) == 0, Path(log).read_text()[-4000:]
    losses = list(read_metrics(out, "train/loss").values())
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2]) - 0.5
    summary = _check_export(out, tiny_data_dir)
    assert summary["world_size"] == 2 and summary["steps"] == 8


def test_callbacks_run_dev_and_saves_once_per_step_and_a_stop_saves_without_dev():
    """The loop's side effects as the callbacks schedule them: dev loss every 2 steps and at epoch ends, a
    checkpoint every 3 steps and at the end, never twice for one step; a stop request ends with a checkpoint
    and no dev loss; the fault hook poisons only its rank and step."""
    from types import SimpleNamespace

    from babylm_ds.training.callbacks import Checkpoint, DevLoss, FaultInjection, TrainState

    calls = []
    t = SimpleNamespace(rank=1, dev=lambda step: calls.append(("dev", step)) or 1.5,
                        save=lambda step: calls.append(("save", step)))
    callbacks, s = [FaultInjection("1:2:nan"), DevLoss(2), Checkpoint(3)], TrainState()

    def emit(hook):
        for c in callbacks:
            getattr(c, hook)(t, s)

    poisoned = []
    for step in range(1, 7):
        emit("on_step_start")
        poisoned.append(s.poison)
        s.step = step
        emit("on_step_end")
        if step == 4:
            emit("on_epoch_end")  # dev already done at step 4: not again
    emit("on_train_end")
    assert poisoned == [False, False, True, False, False, False]  # before step 3, i.e. once 2 steps are done
    assert calls == [("dev", 2), ("save", 3), ("dev", 4), ("dev", 6), ("save", 6)]
    assert (s.last_dev, s.last_save, s.dev_loss) == (6, 6, 1.5)
    calls.clear()
    s.step, s.stop = 7, "stop requested"
    emit("on_train_end")
    assert calls == [("save", 7)]


STOP = """
import sys
from babylm_ds.config import parse
from babylm_ds.training.callbacks import Callback, default_callbacks
from babylm_ds.training.pretrain import pretrain

class StopAt(Callback):  # what a "stop requested -> save -> exit" hook looks like
    def on_step_end(self, t, s):
        if s.step == 4:
            s.stop = "stop requested"

cfg = parse("pretrain", sys.argv[1:])
summary = pretrain(cfg, default_callbacks(cfg) + [StopAt()])
assert summary["stopped"] == "stop requested" and summary["steps"] == 4, summary
"""


@pytest.mark.slow
def test_stop_callback_saves_and_resume_is_exact(tiny_data_dir, tmp_path):
    """One more callback stops a run after step 4: it ends checkpointed at step 4, not exported; --resume
    then gives the uninterrupted run's per-step losses bit for bit."""
    common = ["--data", str(tiny_data_dir), "--max-steps", "8", "--eval-every", "4"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    _ok(_finish(_start([sys.executable], full, *common), f"{full}.log"), full)
    with open(f"{stopped}.log", "w") as f:
        proc = subprocess.run([sys.executable, "-c", STOP, *TINY, *common, "--out", str(stopped)], stdout=f,
                              stderr=subprocess.STDOUT, env={**os.environ, **LAUNCH_ENV}, cwd=ROOT, timeout=HANG_S)
    _ok(proc.returncode, stopped)
    assert (stopped / "checkpoints" / "latest").read_text() == "step4"
    assert not (stopped / "final").exists() and not (stopped / "summary.json").exists()
    assert max(read_metrics(stopped, "train/loss")) == 4 and list(read_metrics(stopped, "dev/loss")) == [4]
    _ok(_finish(_start([sys.executable], stopped, *common, "--resume"), f"{stopped}.log"), stopped)
    assert read_metrics(stopped, "train/loss") == read_metrics(full, "train/loss")
    assert read_metrics(stopped, "dev/loss") == read_metrics(full, "dev/loss")
    assert (stopped / "final" / "model.safetensors").is_file()

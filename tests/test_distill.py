"""Distillation end to end on CPU: cache_logits.py with real (micro) teachers, distill.py offline with
ZeRO-2 on 2 ranks (KD falls, kill + --resume is exact), online teachers with deep supervision, and
refusal of a cache built for other data."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from babylm_ds.cache import TeacherCache, verify
from babylm_ds.config import Distill, parse
from babylm_ds.models.manifest import write_manifest
from babylm_ds.training.dist import free_port
from babylm_ds.training.distill import check_distill_args, distill, online_loss
from babylm_ds.utils.io import sha256_file
from launch import HANG_S, LAUNCH_ENV, ROOT, read_metrics

MICRO_LLAMA = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2,
                   num_key_value_heads=2)
STUDENT = ["--model", "llama-tiny", "--model-config", *[f"{k}={v}" for k, v in MICRO_LLAMA.items()],
           "--micro-batch", "4", "--lr", "1e-2", "--warmup-steps", "2", "--log-every", "1", "--dist-timeout", "60",
           "--dev-max-seqs", "8"]
ENV = {**LAUNCH_ENV, "TOKENIZERS_PARALLELISM": "false"}


def run(cmd, log, timeout=HANG_S, **env):
    """Run a launcher; returns (exit code, seconds), output in `log`."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **ENV, **env})
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"timed out after {timeout}s:\n{Path(log).read_text()[-3000:]}") from None
    return rc, time.time() - t0


def ok(rc_seconds, log):
    assert rc_seconds[0] == 0, Path(log).read_text()[-4000:]


@pytest.fixture(scope="module")
def micro(tiny_data_dir, tmp_path_factory):
    """Two micro teachers (Llama + GPT-2, sharpened so their targets are far from uniform) and their cache."""
    from babylm_ds.models import build_model
    root = tmp_path_factory.mktemp("distill")
    teachers = []
    for seed, (name, overrides) in enumerate([("llama-tiny", MICRO_LLAMA),
                                              ("gpt2-tiny", dict(n_embd=32, n_layer=1, n_head=2))]):
        torch.manual_seed(seed)
        model = build_model(name, vocab_size=1000, **overrides)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(30.0)
        model.save_pretrained(root / name)
        write_manifest(root / name)  # as an export has one: teachers are verified before they are read
        teachers.append(root / name)
    cache = root / "cache"
    log = root / "cache.log"
    ok(run([sys.executable, "launchers/cache_logits.py", "--data", str(tiny_data_dir),
            "--teachers", *map(str, teachers), "--out", str(cache),
            "--k", "16", "--shard-size", "512", "--batch-size", "64", "--kl-sample", "8"], log), log)
    return {"root": root, "teachers": teachers, "cache": cache, "log": log}


def test_cache_launcher_matches_teachers(micro, tiny_data_dir):
    from transformers import AutoModelForCausalLM

    import babylm_ds.models  # noqa: F401
    from babylm_ds.data import PackedDataset
    assert verify(str(micro["cache"])) == []
    cache = TeacherCache(micro["cache"])
    cfg = cache.config
    assert [t["sha256"]["model.safetensors"] for t in cfg["teachers"]] == \
        [sha256_file(t / "model.safetensors") for t in micro["teachers"]]
    stats = cache.manifest["stats"]
    assert stats["bytes_per_token"] == 16 * 2 + 16 * 2 + 4 and stats["kl_full_vs_cached"] > 0
    assert "bytes/token" in micro["log"].read_text()
    idx = torch.tensor([1079, 3, 600])
    ds = PackedDataset(tiny_data_dir, "train")
    x = torch.stack([ds[int(i)]["input_ids"] for i in idx])
    with torch.no_grad():  # independent reference: mean of the two teachers' raw logits
        logits = sum(AutoModelForCausalLM.from_pretrained(t).eval()(x).logits for t in micro["teachers"]) / 2
    ref = torch.log_softmax(logits, -1).topk(16, -1)
    ids, logprobs, tail = cache.get(idx)
    assert (ids == ref.indices).float().mean() > 0.99  # ties/ulps may swap a neighbouring pair
    torch.testing.assert_close(logprobs.gather(-1, ids.argsort(-1)), ref.values.gather(-1, ref.indices.argsort(-1)),
                               atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("key", ["seq_len", "fingerprint", "tokenizer_hash"])
def test_distill_refuses_cache_for_other_data(micro, tiny_data_dir, tmp_path, key):
    bad = tmp_path / "cache"
    shutil.copytree(micro["cache"], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["config"][key] = 1 if key == "seq_len" else "other"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    # an edited seq_len no longer fits the shard sizes the manifest lists, which is caught first
    with pytest.raises(ValueError, match=f"does not match the training data: {key}|seq_len=1 make 512 recor"):
        distill(parse("distill", ["--data", str(tiny_data_dir), "--teacher-cache", str(bad), "--out",
                                  str(tmp_path / "o"), *STUDENT]))


def test_presets_fill_defaults_that_flags_override():
    cfg = parse("distill", ["--preset", "babyllama-ensemble", "--data", "d", "--out", "o", "--teacher-cache", "c"])
    assert (cfg.model.name, cfg.distill.kd_reduction, cfg.distill.alpha, cfg.distill.temperature, cfg.optim.lr,
            cfg.optim.micro_batch) == ("babyllama-58m", "batchmean", 0.5, 2.0, 2.5e-4, 32)
    cfg = parse("distill", ["--preset", "self-hgrn-tiny", "--data", "d", "--out", "o", "--teachers", "t",
                            "--temperature", "4", "--student", "babyhgrn-tiny"])
    assert (cfg.model.name, cfg.distill.temperature, cfg.distill.kd_reduction) == ("babyhgrn-tiny", 4.0, "token")
    check_distill_args(cfg)
    with pytest.raises(ValueError, match="teacher targets"):
        check_distill_args(parse("distill", ["--model", "llama-tiny", "--data", "d", "--out", "o"]))
    with pytest.raises(ValueError, match="needs online --teachers"):
        check_distill_args(parse("distill", ["--model", "m", "--data", "d", "--out", "o", "--teacher-cache", "c",
                                             "--beta", "1"]))


def test_online_loss_is_full_vocab_kd(micro, tiny_data_dir):
    """training.distill.online_loss (no deep supervision) = α·CE + (1−α)·T²·KL against the teachers' mean logits."""
    from babylm_ds.cache import load_teachers
    from babylm_ds.data import PackedDataset
    from babylm_ds.models import build_model
    teachers = load_teachers(micro["teachers"], 1000)
    assert all(not p.requires_grad for t in teachers for p in t.parameters())
    with pytest.raises(SystemExit, match="teacher .* has vocab_size 1000, expected 999"):
        load_teachers(micro["teachers"], 999)
    torch.manual_seed(0)
    student = build_model("llama-tiny", vocab_size=1000, **MICRO_LLAMA)
    ds = PackedDataset(tiny_data_dir, "train")
    x = torch.stack([ds[i]["input_ids"] for i in range(3)])
    d = Distill(alpha=0.3, temperature=2.0, kd_reduction="token", beta=0.0)
    loss, m = online_loss(d, teachers, [0.5, 0.5], [])(student, {"input_ids": x, "idx": torch.arange(3)})
    with torch.no_grad():
        t = sum(teacher(x).logits for teacher in teachers) / 2
    s = student(x).logits
    kl = (torch.softmax(t / 2, -1) * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(s[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    torch.testing.assert_close(loss, 0.3 * ce + 0.7 * 4 * kl, rtol=1e-5, atol=1e-5)
    assert m["kd"] == pytest.approx(4 * kl.item(), rel=1e-5)


@pytest.mark.slow
def test_zero2_offline_kd_falls_and_resumes_exactly(micro, tiny_data_dir, tmp_path):
    def launch(out, *extra, env=None):
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
               "launchers/distill.py", "--ds_config", "ds_configs/zero2.json", *STUDENT, "--data", str(tiny_data_dir),
               "--teacher-cache", str(micro["cache"]), "--out", str(out), "--max-steps", "8", "--save-every", "4",
               "--grad-accum", "2", *extra]
        return run(cmd, f"{out}.log", **(env or {}))
    full, crash = tmp_path / "full", tmp_path / "crash"
    ok(launch(full), f"{full}.log")
    kd = read_metrics(full, "train/kd")
    assert sorted(kd) == list(range(1, 9))
    assert kd[7] + kd[8] < 0.95 * (kd[1] + kd[2]), kd
    assert (full / "final" / "model.safetensors").exists()
    rc, _ = launch(crash, env={"BABYLM_DS_FAULT_AT_STEP": "1:6"})
    assert rc != 0 and (crash / "checkpoints" / "latest").read_text().strip() == "step4"
    ok(launch(crash, "--resume"), f"{crash}.log")
    for key in ("train/loss", "train/ce", "train/kd"):
        assert read_metrics(crash, key) == read_metrics(full, key), key


@pytest.mark.slow
def test_online_zero3_teachers_sharded_with_deep_supervision(micro, tiny_data_dir, tmp_path):
    """2 ranks, ZeRO-3: online ensemble held sharded (no optimizer) + hidden-state MSE; the projections
    train with the student but are not exported."""
    out = tmp_path / "online"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "launchers/distill.py", "--ds_config", "ds_configs/zero3.json", *STUDENT, "--data", str(tiny_data_dir),
           "--out", str(out), "--teachers", *map(str, micro["teachers"]), "--beta", "1.0", "--layer-map", "1:1,2:2",
           "--max-steps", "6"]
    ok(run(cmd, f"{out}.log"), f"{out}.log")
    log = Path(f"{out}.log").read_text()
    held = re.findall(r"\[rank (\d)\] teacher .*this rank holds ([\d,]+) of ([\d,]+) parameters", log)
    assert len(held) == 4, log[-3000:]
    for _, mine, total in held:
        assert 0 < int(mine.replace(",", "")) <= int(total.replace(",", "")) // 2 + 64
    hidden = read_metrics(out, "train/hidden")
    assert len(hidden) == 6 and hidden[6] < hidden[1]
    from safetensors import safe_open
    with safe_open(str(out / "final" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "kd_proj" in k]

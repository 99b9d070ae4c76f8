"""Teacher-logit cache: round trip, KD losses vs full-vocab references, kill/resume, verify, mismatches.

A synthetic "bigram" teacher (logits = a fixed random table indexed by the input token) keeps these
fast; the real-model path is exercised in test_distill.py. Run as a script, this file writes a cache
(used by the kill/resume test's child processes).
"""
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from babylm_ds.cache import TeacherCache, check_compatible, claim_cache, verify, write_cache
from babylm_ds.cache.cli import main as cache_cli
from babylm_ds.cache.format import id_dtype
from babylm_ds.losses import TAIL_MODES, cache_kl, kd_loss, kd_loss_full, tempered_teacher

V, T, N = 300, 16, 14


def make_config(k, logprob_dtype="float16", shard_size=4, batch_size=2):
    return {"teachers": [{"name": "bigram"}], "tokenizer_hash": "tok", "fingerprint": "fp", "seq_len": T,
            "vocab_size": V, "split": "train", "num_sequences": N, "k": k, "shard_size": shard_size,
            "batch_size": batch_size, "dtypes": {"ids": id_dtype(V), "logprobs": logprob_dtype, "tail": "float32"}}


def dataset():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, V, (T,), generator=g), "idx": i} for i in range(N)]


def teacher_fn(input_ids):
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(2)) * 3.0
    return table[input_ids]


def build(out, k=8, **kw):
    return write_cache(str(out), dataset(), make_config(k, **kw), teacher_fn, batch_size=2, kl_sample=4,
                       log=lambda m: None)


def tree(path):
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files if f != ".lock"}


def test_round_trip_any_order(tmp_path):
    manifest = build(tmp_path, k=8)
    assert verify(str(tmp_path)) == [] and cache_cli(["verify", str(tmp_path)]) == 0
    cache = TeacherCache(tmp_path)
    idx = torch.tensor([13, 0, 5, 5, 9])
    ids, logprobs, tail = cache.get(idx)
    ref = torch.log_softmax(teacher_fn(torch.stack([dataset()[i]["input_ids"] for i in idx])).double(), -1)
    ref_vals, ref_ids = ref.topk(8, -1)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(logprobs.double(), ref_vals, atol=2e-3, rtol=1e-3)  # fp16 storage
    torch.testing.assert_close(tail.double(), torch.log1p(-ref_vals.exp().sum(-1)), atol=1e-5, rtol=1e-5)
    assert manifest["stats"]["bytes_per_token"] == 8 * 2 + 8 * 2 + 4
    assert manifest["stats"]["kl_full_vs_cached"] > 0


def test_k_equals_vocab_offline_equals_online(tmp_path):
    build(tmp_path, k=V, logprob_dtype="float32")
    idx = torch.tensor([3, 11])
    teacher = teacher_fn(torch.stack([dataset()[i]["input_ids"] for i in idx]))
    student = torch.randn(2, T, V, generator=torch.Generator().manual_seed(3))
    labels = torch.stack([dataset()[i]["input_ids"] for i in idx])
    ids, logprobs, tail = TeacherCache(tmp_path).get(idx)
    assert torch.isinf(tail).all()
    for reduction in ("token", "batchmean"):
        off = kd_loss(student, ids, logprobs, tail, labels, 0.5, 2.0, reduction)
        on = kd_loss_full(student, teacher, labels, 0.5, 2.0, reduction)
        for a, b in zip(off, on, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # BabyLlama's batchmean: nn.KLDivLoss(reduction="batchmean") on [B, T, V] times T².
    ref = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(student / 2, -1), F.softmax(teacher / 2, -1)) * 4
    torch.testing.assert_close(kd_loss_full(student, teacher, labels, reduction="batchmean")[2], ref)


def test_tail_bucket_is_used(tmp_path):
    k = 8
    build(tmp_path, k=k, logprob_dtype="float32")
    idx = torch.tensor([1, 7])
    x = torch.stack([dataset()[i]["input_ids"] for i in idx])
    teacher, student = teacher_fn(x).double(), torch.randn(2, T, V, generator=torch.Generator().manual_seed(4)).double()
    ids, logprobs, tail = TeacherCache(tmp_path).get(idx)
    kd = kd_loss(student, ids, logprobs, tail, x, alpha=0.0, temperature=1.0)[2]
    # independent reference at T=1: KL between the k+1-bin coarse-grainings of the full distributions
    p, s = F.softmax(teacher, -1), F.softmax(student, -1)
    top = teacher.topk(k, -1).indices
    pk, sk = p.gather(-1, top), s.gather(-1, top)
    pc = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    sc = torch.cat([sk, 1 - sk.sum(-1, keepdim=True)], -1)
    ref = (pc * (pc.log() - sc.log())).sum(-1).mean()
    torch.testing.assert_close(kd.double(), ref, rtol=1e-4, atol=1e-6)
    renorm = (pk / pk.sum(-1, keepdim=True) * ((pk / pk.sum(-1, keepdim=True)).log()
                                                - (sk / sk.sum(-1, keepdim=True)).log())).sum(-1).mean()
    assert abs(kd.item() - renorm.item()) > 0.05 * abs(ref.item())


def test_tempered_tail_bounds_and_errors():
    """The exact tempered tail Σ_tail p^{1/T} lies between the 'flat' and 'uniform' estimates; on a
    Zipf-like teacher both beat the one-token 'bucket', and all are exact at T=1."""
    g = torch.Generator().manual_seed(5)
    ranks = torch.arange(1, 2001, dtype=torch.float64)
    logits = torch.stack([(-1.1 * ranks.log())[torch.randperm(2000, generator=g)] for _ in range(64)])
    logits = (logits + 0.3 * torch.randn(64, 2000, generator=g, dtype=torch.float64)).unsqueeze(0)
    logp = torch.log_softmax(logits, -1)
    vals, ids = logp.topk(32, -1)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    for T in (2.0, 4.0):
        exact = (logp / T).scatter(-1, ids, float("-inf")).logsumexp(-1)  # log Σ_tail p^{1/T}
        est = {m: tempered_teacher(vals, tail, T, 2000, m) for m in TAIL_MODES}  # normalised over k+1
        rel = {m: e[..., -1] - torch.logsumexp(e[..., :-1], -1) for m, e in est.items()}  # log tail / Σ kept
        true = exact - torch.logsumexp(vals / T, -1)
        assert (rel["flat"] <= true + 1e-4).all() and (true <= rel["uniform"] + 1e-4).all()
        assert (rel["bucket"] <= rel["flat"] + 1e-4).all()
    assert max(cache_kl(logits, ids, vals, tail, 1.0, m)[1] for m in TAIL_MODES) < 1e-6
    err = {m: cache_kl(logits, ids, vals, tail, 2.0, m) for m in TAIL_MODES}
    assert max(err["flat"][1], err["uniform"][1]) < err["bucket"][1] / 2


def test_resume_after_kill_is_byte_identical(tmp_path):
    build(tmp_path / "ref", k=8)
    out, rng, script = tmp_path / "killed", random.Random(0), os.path.abspath(__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for trial in range(3):
        event = rng.randint(1, 6)
        r = subprocess.run([sys.executable, script, str(out)], env=dict(env, BABYLM_DS_CACHE_KILL_AT=str(event)))
        assert r.returncode == -9, f"trial {trial}: writer was not killed at event {event} (rc {r.returncode})"
    if (out / "shards").exists():  # a kill mid-shard leaves a temp file that the rerun's claim_cache deletes
        assert verify(str(out)) != []
    subprocess.run([sys.executable, script, str(out)], env=env, check=True)
    assert verify(str(out)) == []
    assert tree(out) == tree(tmp_path / "ref")


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "manifest"])
def test_verify_detects_damage(tmp_path, damage, capsys):
    manifest = build(tmp_path, k=8)
    shard = tmp_path / manifest["shards"][1]["path"]
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "missing":
        shard.unlink()
    else:
        (tmp_path / "manifest.json").unlink()
    assert cache_cli(["verify", str(tmp_path)]) == 1
    msg = capsys.readouterr().out
    assert "BROKEN" in msg and {"flip": "sha256", "truncate": "truncated", "missing": "missing shard",
                                "manifest": "manifest.json"}[damage] in msg
    # a rerun of the writer repairs exactly that damage
    build(tmp_path, k=8)
    assert verify(str(tmp_path)) == []


@pytest.mark.parametrize("key", ["tokenizer_hash", "seq_len", "fingerprint"])
def test_mismatched_data_is_refused(tmp_path, key):
    build(tmp_path, k=8)
    cache = TeacherCache(tmp_path)
    meta = {"tokenizer_hash": "tok", "fingerprint": "fp", "seq_len": T, "vocab_size": V}
    cache.check_compatible(meta)
    with pytest.raises(ValueError, match=key):
        check_compatible(cache.manifest, dict(meta, **{key: meta[key] * 2}))


if __name__ == "__main__":  # as launchers/cache_logits.py does: claim (lock, clear killed writes), then write
    torch.set_num_threads(1)
    claim_cache(sys.argv[1], make_config(8))
    build(sys.argv[1], k=8)

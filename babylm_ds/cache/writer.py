"""Writing the cache: each rank computes its shards; rank 0 writes the manifest once all are done.

Resumable: a shard is skipped when its sidecar's config checksum matches and the file's sha256
verifies; anything else (missing, partial, corrupt, other config) is recomputed. Each shard's
bytes depend only on its sequence range and the batch size, so a resumed cache is byte-identical
to an uninterrupted one. Set BABYLM_DS_CACHE_KILL_AT=N to SIGKILL the process at its N-th write
event (after a batch lands in a temp file, after a shard's rename, after its sidecar): tests only.
"""
import contextlib
import hashlib
import json
import os
import shutil
import signal

import numpy as np
import torch
from tqdm import tqdm

from babylm_ds.losses import TAIL_MODES, cache_kl
from babylm_ds.utils.io import atomic_path, atomic_write_json, lock_dir, read_json, sha256_file

from .format import (
    FORMAT_VERSION,
    MANIFEST,
    SHARD_DIR,
    config_sha,
    record_dtype,
    shard_name,
    shard_ranges,
    sidecar_name,
)
from .reader import TeacherCache

_events = 0


def _fault_point():
    """Count a write event; SIGKILL ourselves at the one named by BABYLM_DS_CACHE_KILL_AT."""
    global _events
    _events += 1
    if os.environ.get("BABYLM_DS_CACHE_KILL_AT") == str(_events):
        os.kill(os.getpid(), signal.SIGKILL)


def topk_records(logits, k, dtype):
    """Combined logits [B, T, V] → structured records: top-k ids + T=1 log-probs + log tail mass."""
    logp = torch.log_softmax(logits.float(), -1)
    values, ids = logp.topk(k, -1)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    rec = np.empty(logits.shape[0], dtype=dtype)
    rec["ids"] = ids.cpu().numpy()
    rec["logprobs"] = values.cpu().numpy()
    rec["tail"] = tail.cpu().numpy()
    return rec


def _batch(dataset, start, end, device):
    return torch.stack([torch.as_tensor(dataset[i]["input_ids"]) for i in range(start, end)]).to(device)


def _shard_done(out_dir, start, end, csha, size):
    side = os.path.join(out_dir, sidecar_name(start, end))
    path = os.path.join(out_dir, shard_name(start, end))
    if not (os.path.isfile(side) and os.path.isfile(path)):
        return False
    try:
        entry = read_json(side, "")
    except ValueError:
        return False
    return (entry.get("config_sha") == csha and os.path.getsize(path) == size == entry["size"]
            and sha256_file(path) == entry["sha256"])


def write_shard(out_dir, dataset, start, end, teacher_fn, config, batch_size, device):
    """Compute and atomically write one shard, then its sidecar. Returns the sidecar entry."""
    dtype, name = record_dtype(config), shard_name(start, end)
    h = hashlib.sha256()
    with atomic_path(os.path.join(out_dir, name)) as tmp, open(tmp, "wb") as f:
        for b in range(start, end, batch_size):
            data = topk_records(teacher_fn(_batch(dataset, b, min(b + batch_size, end), device)), config["k"], dtype)
            data = data.tobytes()
            f.write(data)
            h.update(data)
            f.flush()
            _fault_point()
    _fault_point()
    entry = {"path": name, "start": start, "end": end, "size": (end - start) * dtype.itemsize,
             "sha256": h.hexdigest(), "config_sha": config_sha(config)}
    atomic_write_json(os.path.join(out_dir, sidecar_name(start, end)), entry)
    _fault_point()
    return entry


def claim_cache(out_dir, config, force=False):
    """Before any shard is written (rank 0): lock `out_dir`, and refuse to overwrite a finished cache made
    with another config; `force` deletes it first. A finished cache of the same config is resumed."""
    lock_dir(out_dir)
    path = os.path.join(out_dir, MANIFEST)
    if force:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        shutil.rmtree(os.path.join(out_dir, SHARD_DIR), ignore_errors=True)
        return
    if not os.path.exists(path):
        return
    fix = "choose another --out, or pass --force to rebuild it"
    try:
        old = read_json(path, fix)["config"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} exists but is unreadable; {fix}") from None
    if old != config:
        diffs = [k if k == "teachers" else f"{k} {old.get(k)!r} -> {config.get(k)!r}"
                 for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        raise ValueError(f"{out_dir} holds a finished teacher cache made with other settings "
                         f"({', '.join(diffs)}); {fix}")


def sample_stats(cache, dataset, teacher_fn, num_sequences, temperature, batch_size, device):
    """bytes/token and mean KL(full teacher ‖ cached) at T=1 and at `temperature` on the first sequences."""
    n = min(num_sequences, len(cache))
    stats = {"bytes_per_token": cache.dtype.itemsize / cache.config["seq_len"], "kl_sample_sequences": n}
    if n == 0:
        return stats
    sums = {}
    for b in range(0, n, batch_size):
        idx = torch.arange(b, min(b + batch_size, n))
        logits = teacher_fn(_batch(dataset, b, min(b + batch_size, n), device)).cpu()
        ids, logprobs, tail = cache.get(idx)
        for T in sorted({1.0, float(temperature)}):
            for mode in TAIL_MODES if T != 1.0 else TAIL_MODES[:1]:  # all modes are exact at T=1
                full, coarse = cache_kl(logits, ids, logprobs, tail, T, mode)
                acc = sums.setdefault(f"T={T:g}/{mode}", [0.0, 0.0])
                acc[0] += full * len(idx) / n
                acc[1] += coarse * len(idx) / n
    stats["kl"] = {key: {"full": v[0], "tail_approx": v[1]} for key, v in sums.items()}
    stats["kl_full_vs_cached"] = sums["T=1/uniform"][0]
    return stats


def write_cache(out_dir, dataset, config, teacher_fn, batch_size=8, rank=0, world_size=1, barrier=lambda: None,
                device="cpu", kl_sample=16, kl_temperature=2.0, log=print, stop=None):
    """Write (or resume) the cache for `dataset` under `out_dir`; rank 0 returns the manifest.

    Shards go round-robin to ranks, one round at a time. `stop(done, total)`, if given, is called on every rank
    after each round with the number of shards finished so far (a collective: all ranks must get the same
    answer); when it returns true, every rank returns None at once (the finished shards are kept, no manifest)."""
    os.makedirs(os.path.join(out_dir, SHARD_DIR), exist_ok=True)
    csha, size = config_sha(config), record_dtype(config).itemsize
    ranges = shard_ranges(config["num_sequences"], config["shard_size"])
    done = redone = 0
    mine = ranges[rank::world_size]
    bar = tqdm(total=sum(end - start for start, end in mine), unit="seq", desc="teacher logits (rank 0)",
               disable=rank != 0, dynamic_ncols=True)
    for i in range(-(-len(ranges) // world_size)):
        if i < len(mine):
            start, end = mine[i]
            if _shard_done(out_dir, start, end, csha, (end - start) * size):
                done += 1
            else:
                write_shard(out_dir, dataset, start, end, teacher_fn, config, batch_size, device)
                redone += 1
            bar.update(end - start)
        if stop is not None and stop(min(len(ranges), (i + 1) * world_size), len(ranges)):
            bar.close()
            return None
    bar.close()
    log(f"[rank {rank}] cache shards: {done} verified and kept, {redone} written")
    barrier()
    if rank != 0:
        return None
    shards = []
    for start, end in ranges:
        with open(os.path.join(out_dir, sidecar_name(start, end))) as f:
            entry = json.load(f)
        if entry["config_sha"] != csha:
            raise RuntimeError(f"shard {entry['path']} was written for another config; rerun to redo it")
        shards.append({k: entry[k] for k in ("path", "start", "end", "size", "sha256")})
    manifest = {"format_version": FORMAT_VERSION, "config": config, "shards": shards}
    manifest["stats"] = sample_stats(TeacherCache(out_dir, manifest), dataset, teacher_fn, kl_sample,
                                     kl_temperature, batch_size, device)
    atomic_write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest

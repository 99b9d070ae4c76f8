"""On-disk layout of the teacher-logit cache, and its verification.

DIR/manifest.json  {format_version, config, shards: [{path, start, end, size, sha256}], stats}
DIR/shards/SSSSSSSSS-EEEEEEEEE.bin   records for sequence ids [S, E), one record per sequence:
    ids [seq_len, k] (uint16 if vocab ≤ 65,536 else uint32), logprobs [seq_len, k] (fp16, log-softmax
    at T=1 of the combined teacher logits, sorted descending), tail [seq_len] (fp32, log of the mass
    outside the top-k; -inf when k = vocab)
DIR/shards/SSSSSSSSS-EEEEEEEEE.json  sidecar {start, end, size, sha256, config_sha}: the writer's
    journal, written atomically after its shard, so a resumed run knows which shards are done.
"""
import hashlib
import json
import os

import numpy as np

from babylm_ds.utils.io import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"


def id_dtype(vocab_size):
    return "uint16" if vocab_size <= 65536 else "uint32"


def record_dtype(config):
    """numpy structured dtype of one sequence's record."""
    T, k, d = config["seq_len"], config["k"], config["dtypes"]
    return np.dtype([("ids", d["ids"], (T, k)), ("logprobs", d["logprobs"], (T, k)), ("tail", d["tail"], (T,))])


def config_sha(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def shard_ranges(num_sequences, shard_size):
    return [(s, min(s + shard_size, num_sequences)) for s in range(0, num_sequences, shard_size)]


def shard_name(start, end):
    return f"{SHARD_DIR}/{start:09d}-{end:09d}.bin"


def sidecar_name(start, end):
    """The writer's per-shard JSON beside `shard_name(start, end)`."""
    return f"{SHARD_DIR}/{start:09d}-{end:09d}.json"


def load_manifest(cache_dir):
    path = os.path.join(cache_dir, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{cache_dir}: no {MANIFEST}; not a teacher cache, or its writer has not finished")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')} != supported {FORMAT_VERSION}")
    return manifest


def check_compatible(manifest, meta, cache_dir="cache"):
    """Raise ValueError naming every key where the cache was built for different data than `meta`."""
    cfg = manifest["config"]
    diffs = [f"{key} (cache {cfg[key]!r} vs data {meta[key]!r})"
             for key in ("tokenizer_hash", "seq_len", "fingerprint", "vocab_size") if cfg[key] != meta[key]]
    if diffs:
        raise ValueError(f"teacher cache {cache_dir} does not match the training data: " + "; ".join(diffs)
                         + ". Rebuild it with launchers/cache_logits.py on this data directory.")


def verify(cache_dir):
    """Check manifest, coverage and every shard's size and sha256. Returns a list of problems (empty = ok)."""
    try:
        manifest = load_manifest(cache_dir)
    except (ValueError, json.JSONDecodeError) as e:
        return [str(e)]
    cfg = manifest["config"]
    rec = record_dtype(cfg).itemsize
    problems, expected = [], shard_ranges(cfg["num_sequences"], cfg["shard_size"])
    got = [(s["start"], s["end"]) for s in manifest["shards"]]
    if got != expected:
        problems.append(f"manifest shards cover {got[:3]}... but {cfg['num_sequences']} sequences in shards of "
                        f"{cfg['shard_size']} need {expected[:3]}...")
    for s in manifest["shards"]:
        path = os.path.join(cache_dir, s["path"])
        if not os.path.isfile(path):
            problems.append(f"missing shard {s['path']}")
            continue
        size = os.path.getsize(path)
        if size != s["size"] or size != (s["end"] - s["start"]) * rec:
            problems.append(f"shard {s['path']}: {size} bytes, expected {(s['end'] - s['start']) * rec} (truncated?)")
        elif sha256_file(path) != s["sha256"]:
            problems.append(f"shard {s['path']}: sha256 mismatch (corrupted)")
    return problems

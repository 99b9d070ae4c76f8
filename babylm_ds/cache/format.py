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
from tqdm import tqdm

from babylm_ds.utils.io import check_schema, read_json, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
DTYPES = {"ids": ("uint16", "uint32"), "logprobs": ("float16", "float32"), "tail": ("float16", "float32")}
SCHEMA = {"format_version": int,
          "config": {"seq_len": int, "k": int, "vocab_size": int, "num_sequences": int, "shard_size": int,
                     "tokenizer_hash": str, "fingerprint": str, "dtypes": {"ids": str, "logprobs": str, "tail": str}},
          "shards": [{"path": str, "start": int, "end": int, "size": int, "sha256": str}]}


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
    """DIR/manifest.json, checked without reading a shard: schema, format version, k and dtypes, shard
    coverage, and every shard's listed size against k, dtypes and seq_len. ValueError naming the file."""
    path = os.path.join(cache_dir, MANIFEST)
    fix = f"rebuild it with launchers/cache_logits.py --out {cache_dir} --force"
    if not os.path.isfile(path):
        raise ValueError(f"{cache_dir}: no {MANIFEST}; not a teacher cache, or its writer has not finished "
                         "(rerun the same launchers/cache_logits.py command to finish it)")
    manifest = check_schema(read_json(path, fix), SCHEMA, path, fix)
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest['format_version']} != supported {FORMAT_VERSION}; {fix}")
    cfg = manifest["config"]
    if bad := [f"{key}={cfg['dtypes'][key]!r}" for key, ok in DTYPES.items() if cfg["dtypes"][key] not in ok]:
        raise ValueError(f"{path}: unsupported dtypes {', '.join(bad)}; {fix}")
    if cfg["dtypes"]["ids"] != id_dtype(cfg["vocab_size"]) or not 1 <= cfg["k"] <= cfg["vocab_size"] \
            or cfg["seq_len"] < 1 or cfg["shard_size"] < 1:
        raise ValueError(f"{path}: inconsistent config (k={cfg['k']}, vocab_size={cfg['vocab_size']}, ids "
                         f"{cfg['dtypes']['ids']}, seq_len={cfg['seq_len']}, shard_size={cfg['shard_size']}); {fix}")
    got = [(s["start"], s["end"]) for s in manifest["shards"]]
    if got != shard_ranges(cfg["num_sequences"], cfg["shard_size"]):
        raise ValueError(f"{path}: shards cover {got[:3]}..., not {cfg['num_sequences']} sequences in shards of "
                         f"{cfg['shard_size']}; {fix}")
    rec = record_dtype(cfg).itemsize
    for s in manifest["shards"]:
        if s["size"] != (s["end"] - s["start"]) * rec:
            raise ValueError(f"{path}: shard {s['path']} is listed with {s['size']} bytes, but k={cfg['k']}, "
                             f"dtypes {cfg['dtypes']} and seq_len={cfg['seq_len']} make {s['end'] - s['start']} "
                             f"records {(s['end'] - s['start']) * rec} bytes (manifest edited?); {fix}")
    return manifest


def check_compatible(manifest, meta, cache_dir="cache"):
    """Raise ValueError naming every key where the cache was built for different data than `meta`."""
    cfg = manifest["config"]
    diffs = [f"{key} (cache {cfg[key]!r} vs data {meta[key]!r})"
             for key in ("tokenizer_hash", "seq_len", "fingerprint", "vocab_size") if cfg[key] != meta[key]]
    if diffs:
        raise ValueError(f"teacher cache {cache_dir} does not match the training data: " + "; ".join(diffs)
                         + ". Rebuild it with launchers/cache_logits.py on this data directory.")


def verify(cache_dir, rank=0, world=1, progress=False):
    """Check the manifest and every shard's size and sha256; returns a list of problems (empty = ok).
    Rank `rank` of `world` hashes every world-th shard (see `babylm_ds.training.dist.agree`)."""
    try:
        manifest = load_manifest(cache_dir)
    except ValueError as e:
        return [str(e)]
    problems, mine = [], []
    for s in manifest["shards"]:
        path = os.path.join(cache_dir, s["path"])
        if not os.path.isfile(path):
            problems.append(f"missing shard {path}")
        elif os.path.getsize(path) != s["size"]:
            problems.append(f"shard {path}: {os.path.getsize(path)} bytes, expected {s['size']} (truncated?)")
        else:
            mine.append((path, s))
    mine = mine[rank::world]
    with tqdm(total=sum(s["size"] for _, s in mine), unit="B", unit_scale=True, desc="verify cache",
              disable=not progress or None, leave=False) as bar:
        for path, s in mine:
            if sha256_file(path, visit=lambda block: bar.update(len(block))) != s["sha256"]:
                problems.append(f"shard {path}: sha256 mismatch (corrupted)")
    return problems

"""Tokenize documents (datasets.map, cached), pack them into fixed-length windows stored as
uint16 shards, and read them back (`PackedDataset`, `load_meta`, `verify_data`).

Shard format: `SPLIT/shard_NNNNN.bin`, raw little-endian uint16, shape [num_sequences, seq_len].
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, Sequence, Value
from tqdm import tqdm

from ..config import Data
from ..utils.io import atomic_write_bytes, check_schema, read_json, sha256_file
from .tokenizer import BOS_ID, EOS_ID, load_tokenizer, tokenizer_hash

FORMAT_VERSION = 1
SHARD_SEQUENCES = Data.shard_sequences
META_SCHEMA = {"format_version": int, "seq_len": int, "vocab_size": int, "tokenizer_hash": str, "fingerprint": str,
               "splits": {"train": dict, str: {"shards": [{"path": str, "sha256": str, "num_sequences": int}]}}}


def _encode(batch, tokenizer):
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"ids": [[BOS_ID, *x, EOS_ID] for x in ids]}


def tokenize_documents(docs, tokenizer, tok_hash, cache_dir, num_proc=1):
    """Token ids of every document as `<s> ... </s>`: (flat uint16 array, per-document offsets).

    Runs `datasets.map`; the result is cached in `cache_dir` under a name keyed by the tokenizer
    (its `tokenizer_hash`) and the documents, so re-preparing the same text with the same
    tokenizer skips tokenizing."""
    key = hashlib.sha256(tok_hash.encode())
    for d in docs:
        key.update(d.encode() + b"\x00")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_dict({"text": docs})
    ds = ds.map(
        _encode, batched=True, batch_size=64, fn_kwargs={"tokenizer": tokenizer}, remove_columns=["text"],
        num_proc=num_proc if num_proc > 1 and len(docs) >= 2 * num_proc else None,
        features=Features({"ids": Sequence(Value("uint16"))}),
        cache_file_name=str(Path(cache_dir) / f"tokens-{key.hexdigest()[:20]}.arrow"), desc="tokenize",
    )
    col = ds.data.column("ids")
    flat = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]).astype(np.uint16)
    lengths = np.concatenate([c.value_lengths().to_numpy(zero_copy_only=False) for c in col.chunks])
    return flat, np.concatenate([[0], np.cumsum(lengths)])


def pack(flat, offsets, doc_ids, seq_len):
    """Concatenate documents `doc_ids` (in order) and cut into [n, seq_len] windows; the final
    partial window is dropped. Returns (windows, number of dropped tokens)."""
    tokens = np.concatenate([flat[offsets[i]:offsets[i + 1]] for i in doc_ids]) if len(doc_ids) else flat[:0]
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len), len(tokens) - n * seq_len


def write_shards(windows, split_dir, shard_sequences=SHARD_SEQUENCES):
    """Write windows as uint16 shards (atomic); returns [{path, sha256, num_sequences}] (paths
    relative to the data dir)."""
    split_dir = Path(split_dir)
    shards = []
    for k, start in enumerate(range(0, len(windows), shard_sequences)):
        part = windows[start:start + shard_sequences]
        path = split_dir / f"shard_{k:05d}.bin"
        data = part.astype("<u2").tobytes()
        atomic_write_bytes(path, data)
        shards.append({"path": f"{split_dir.name}/{path.name}", "sha256": hashlib.sha256(data).hexdigest(),
                       "num_sequences": len(part)})
    return shards


def fingerprint(meta):
    """sha256 over the seq_len, the tokenizer hash and every shard checksum (split order)."""
    items = [meta["seq_len"], meta["tokenizer_hash"]]
    items += [[name, [s["sha256"] for s in split["shards"]]] for name, split in sorted(meta["splits"].items())]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def load_meta(data_dir):
    """`data_dir/meta.json` as a dict; ValueError naming the file if it is missing, malformed, of another
    format version, or does not fit the schema."""
    path = Path(data_dir) / "meta.json"
    fix = f"re-run `babylm-ds prepare --out {data_dir} --force`"
    meta = check_schema(read_json(path, fix), META_SCHEMA, path, fix)
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta['format_version']} != {FORMAT_VERSION}; {fix}")
    if meta["seq_len"] < 2 or not 1 <= meta["vocab_size"] <= 65536:
        raise ValueError(f"{path}: seq_len {meta['seq_len']} / vocab_size {meta['vocab_size']} out of range; {fix}")
    return meta


def _shard_size_ok(path, shard, seq_len):
    return path.stat().st_size == shard["num_sequences"] * seq_len * 2  # uint16 tokens


def verify_data(data_dir, rank=0, world=1, progress=False):
    """Check meta.json, the tokenizer (hash and size against meta's vocab_size), the fingerprint, and every
    shard's size, sha256 and token ids (< vocab_size); returns the meta, or raises ValueError naming the
    first bad file and the fix. Rank `rank` of `world` hashes every world-th shard (`agree` joins them)."""
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    fix = f"re-run `babylm-ds prepare --out {data_dir} --force`"
    tokenizer = load_tokenizer(data_dir)
    if tokenizer_hash(tokenizer) != meta["tokenizer_hash"]:
        raise ValueError(f"tokenizer in {data_dir / 'tokenizer'} does not match meta.json tokenizer_hash; {fix}")
    if len(tokenizer) != meta["vocab_size"]:
        raise ValueError(f"{data_dir / 'meta.json'}: vocab_size {meta['vocab_size']} but the tokenizer has "
                         f"{len(tokenizer)} tokens; {fix}")
    if fingerprint(meta) != meta["fingerprint"]:
        raise ValueError(f"{data_dir / 'meta.json'}: fingerprint does not match its shards; {fix}")
    shards = [s for split in meta["splits"].values() for s in split["shards"]]
    for shard in shards:
        path = data_dir / shard["path"]
        if not path.is_file():
            raise ValueError(f"missing shard {path}; {fix}")
        if not _shard_size_ok(path, shard, meta["seq_len"]):
            raise ValueError(f"shard {path} has {path.stat().st_size} bytes, not {shard['num_sequences']} sequences "
                             f"of {meta['seq_len']} uint16 tokens (truncated?); {fix}")
    mine = shards[rank::world]
    with tqdm(total=sum((data_dir / s["path"]).stat().st_size for s in mine), unit="B", unit_scale=True,
              desc="verify data", disable=not progress or None, leave=False) as bar:
        for shard in mine:
            path, top = data_dir / shard["path"], [0]

            def visit(block):
                bar.update(len(block))
                if len(block) >= 2:
                    top[0] = max(top[0], int(np.frombuffer(block, "<u2", len(block) // 2).max()))
            if sha256_file(path, visit=visit) != shard["sha256"]:
                raise ValueError(f"shard {path} checksum mismatch (corrupted or modified); {fix}")
            if top[0] >= meta["vocab_size"]:
                raise ValueError(f"shard {path} holds token id {top[0]} >= vocab_size {meta['vocab_size']}; {fix}")
    return meta


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length token windows of one split, memory-mapped from the uint16 shards.

    `ds[i] -> {"input_ids": LongTensor[seq_len], "idx": i}`; idx is the global window id
    (stable for a given fingerprint; the teacher-logit cache is keyed by it)."""

    def __init__(self, data_dir, split="train"):
        self.data_dir = Path(data_dir)
        self.meta = load_meta(data_dir)
        if split not in self.meta["splits"]:
            raise ValueError(f"split {split!r} not in {self.data_dir} (have {sorted(self.meta['splits'])})")
        self.split, self.seq_len, self.fingerprint = split, self.meta["seq_len"], self.meta["fingerprint"]
        self.shards = self.meta["splits"][split]["shards"]
        self.starts = np.cumsum([0] + [s["num_sequences"] for s in self.shards])
        for s in self.shards:
            path = self.data_dir / s["path"]
            if not path.is_file() or not _shard_size_ok(path, s, self.seq_len):
                raise ValueError(f"shard {path} is missing or has the wrong size; run verify_data({str(data_dir)!r})")
        self._maps = None

    def __len__(self):
        return int(self.starts[-1])

    def __getstate__(self):  # DataLoader workers re-open the memory maps
        return {**self.__dict__, "_maps": None}

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} sequences")
        i = int(i) % len(self)
        if self._maps is None:
            self._maps = [np.memmap(self.data_dir / s["path"], dtype="<u2", mode="r").reshape(-1, self.seq_len)
                          for s in self.shards]
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return {"input_ids": torch.from_numpy(self._maps[k][i - self.starts[k]].astype(np.int64)), "idx": i}

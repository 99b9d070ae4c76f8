"""`prepare_data`: corpus -> cleaned documents -> word budget check -> dev split -> BPE tokenizer
-> packed uint16 shards + meta.json, built in a temp dir and renamed into place."""
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import Data
from ..utils.io import atomic_write_json
from .corpus import count_words, read_corpus
from .pack import FORMAT_VERSION, SHARD_SEQUENCES, fingerprint, pack, tokenize_documents, write_shards
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, tokenizer_hash, train_tokenizer

BUDGET_UNITS = {"": 1, "k": 10**3, "m": 10**6}


def parse_word_budget(budget):
    """10M / 100M / 2.5M / 500k / 12345 -> number of words."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(budget))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"bad word budget {budget!r}: use 10M, 100M or a positive number of words")
    return int(float(m.group(1)) * BUDGET_UNITS[m.group(2).lower()])


def split_documents(doc_words, dev_fraction, seed, min_words=0):
    """Deterministic document-level split: (train ids, dev ids), both sorted. Dev documents are
    drawn (with `seed`) among those of at least `min_words` words when there are enough."""
    n, n_dev = len(doc_words), max(1, round(dev_fraction * len(doc_words))) if dev_fraction > 0 else 0
    if n - n_dev < 1:
        raise ValueError(f"only {n} documents: too few to hold out a dev set (dev_fraction={dev_fraction})")
    pool = np.flatnonzero(np.asarray(doc_words) >= min_words)
    pool = pool if len(pool) >= n_dev else np.arange(n)
    dev = np.sort(np.random.default_rng(seed).permutation(pool)[:n_dev])
    return np.setdiff1d(np.arange(n), dev).tolist(), dev.tolist()


def prepare_data(out_dir, corpus=None, word_budget=Data.word_budget, seq_len=Data.seq_len, vocab_size=Data.vocab_size,
                 dev_fraction=Data.dev_fraction, seed=0, num_proc=Data.num_proc, max_words=None, force=False,
                 shard_sequences=SHARD_SEQUENCES):
    """Prepare `corpus` (file or dir; None: the embedded corpus) into `out_dir`; returns the meta.

    Documents are wrapped `<s> doc </s>`, concatenated per split in corpus order and cut into
    `seq_len` windows (the final partial window is dropped). The dev split holds out
    `dev_fraction` of the documents (at least one; drawn with `seed` among documents of >= seq_len
    words). The tokenizer is trained on the train split only. `word_budget` is checked against
    all words prepared (train + dev) after `max_words` truncation; over budget raises ValueError.
    An existing `out_dir` is refused unless `force`; the new one is built beside it and swapped in."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"output {out} already exists; pass --force to replace it")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if not 0 <= dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    if max_words is not None and max_words <= 0:
        raise ValueError(f"max_words must be positive, got {max_words}")
    budget = parse_word_budget(word_budget)

    files = read_corpus(corpus, max_words)
    docs = [d for _, _, ds in files for d in ds]
    sources = [s for s, _, ds in files for _ in ds]
    file_words = [[count_words(d) for d in ds] for _, _, ds in files]
    doc_words = [w for ws in file_words for w in ws]
    total = sum(doc_words)
    if total > budget:
        raise ValueError(f"corpus has {total:,} words, over the word budget of {budget:,} ({word_budget}); "
                         f"use --max-words or a larger --word-budget")
    split_ids = dict(zip(("train", "dev"), split_documents(doc_words, dev_fraction, seed, min_words=seq_len)))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)
    old_cache = out / "cache"
    try:
        if old_cache.is_dir():
            shutil.move(old_cache, tmp / "cache")
        tokenizer = train_tokenizer((docs[i] for i in split_ids["train"]), vocab_size)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        tok_hash = tokenizer_hash(tokenizer)
        flat, offsets = tokenize_documents(docs, tokenizer, tok_hash, tmp / "cache", num_proc)
        by_source = Counter()
        for s, w in zip(sources, doc_words):
            by_source[s] += w
        meta = {
            "format_version": FORMAT_VERSION, "corpus": "embedded" if corpus is None else str(corpus),
            "tokenizer_hash": tok_hash, "seq_len": seq_len, "vocab_size": len(tokenizer),
            "vocab_size_requested": vocab_size, "special_tokens": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID},
            "dtype": "uint16", "byte_order": "little", "seed": seed, "dev_fraction": dev_fraction,
            "word_budget": budget, "max_words": max_words, "word_count": total,
            "word_count_by_source": dict(sorted(by_source.items())),
            "num_documents": len(docs), "num_tokens_total": int(offsets[-1]),
            "tokens_per_word": round(float(offsets[-1]) / max(total, 1), 4),
            "files": [{"name": n, "source": s, "documents": len(ds), "words": sum(ws)}
                      for (s, n, ds), ws in zip(files, file_words)],
            "splits": {},
        }
        for name, ids in split_ids.items():
            windows, dropped = pack(flat, offsets, ids, seq_len)
            if len(windows) == 0 and (name == "train" or ids):
                raise ValueError(f"{name} split has fewer than seq_len={seq_len} tokens; "
                                 "use more text or a smaller --seq-len")
            meta["splits"][name] = {
                "num_sequences": len(windows), "num_tokens": int(windows.size), "dropped_tokens": int(dropped),
                "num_documents": len(ids), "word_count": sum(doc_words[i] for i in ids),
                "word_count_by_source": {s: sum(doc_words[i] for i in ids if sources[i] == s)
                                         for s in sorted(by_source)},
                "shards": write_shards(windows, tmp / name, shard_sequences),
            }
        meta["fingerprint"] = fingerprint(meta)
        atomic_write_json(tmp / "meta.json", meta)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out)
    except BaseException:
        if (tmp / "cache").is_dir() and out.is_dir():
            shutil.move(tmp / "cache", old_cache)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta

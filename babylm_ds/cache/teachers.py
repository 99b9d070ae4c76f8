"""Frozen teachers: loading HF dirs, weight checksums, and the ensemble's combined logits."""
import glob
import json
import os

import torch

from babylm_ds.models.manifest import loading, verify_model_dir
from babylm_ds.utils.io import read_json, sha256_file


def check_teacher(path, meta, verify=True):
    """ValueError unless `path` is an HF model dir whose files match its manifest.json (unless not `verify`:
    --no-verify), with the data's vocabulary and, when it carries a tokenizer (an exported run's final/
    does), the data's tokenizer (`meta`: the data's meta.json)."""
    from babylm_ds.data import tokenizer_hash
    if os.path.isfile(os.path.join(path, "config.json")):
        verify_model_dir(path, verify)
    config = read_json(os.path.join(path, "config.json"),
                       f"teacher {path}: expected an HF model dir, e.g. a run's OUT/final")
    if config.get("vocab_size") != meta["vocab_size"]:
        raise ValueError(f"teacher {path} has vocab_size {config.get('vocab_size')}, the data {meta['vocab_size']}: "
                         "it was trained with another tokenizer; pretrain it on this data dir")
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast
        with loading(path):
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        if tokenizer_hash(tokenizer) != meta["tokenizer_hash"]:
            raise ValueError(f"teacher {path}: its tokenizer differs from the data's (tokenizer_hash); "
                             "pretrain it on this data dir")


def teacher_info(path, weight):
    """Manifest entry: name, path, model type, weight and sha256 of every safetensors file."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"teacher {path}: no *.safetensors weights (expected an HF model dir, e.g. a run's OUT/final)")
    with open(os.path.join(path, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    name = "/".join(parts[-2:]) if parts[-1] == "final" else parts[-1]  # a run's OUT/final → "OUT/final"
    return {"name": name, "path": os.path.abspath(path), "model_type": model_type,
            "weight": weight, "sha256": {os.path.basename(p): sha256_file(p) for p in files}}


def load_teacher(path, device="cpu", dtype=torch.float32):
    """An HF causal LM in eval mode with requires_grad False (no optimizer state is ever made for it)."""
    from transformers import AutoModelForCausalLM

    import babylm_ds.models  # noqa: F401  registers BabyHGRN with the Auto classes
    with loading(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    return model


def load_teachers(paths, vocab_size, device="cpu", dtype=torch.float32):
    """load_teacher for each path; exits naming the first teacher whose vocab_size differs."""
    teachers = [load_teacher(p, device, dtype) for p in paths]
    for path, t in zip(paths, teachers, strict=True):
        if t.config.vocab_size != vocab_size:
            raise SystemExit(f"error: teacher {path} has vocab_size {t.config.vocab_size}, expected {vocab_size}")
    return teachers


def normalise_weights(weights, n):
    weights = [1.0] * n if not weights else [float(w) for w in weights]
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--teacher-weights needs {n} non-negative numbers with a positive sum, got {weights}")
    return [w / sum(weights) for w in weights]


@torch.no_grad()
def combined_logits(teachers, weights, input_ids, output_hidden_states=False):
    """Weighted mean of the teachers' raw logits (BabyLlama: equal weights), fp32 [B, T, V].

    With `output_hidden_states`, also returns each teacher's tuple of hidden states.
    """
    total, hidden = None, []
    for teacher, w in zip(teachers, weights, strict=True):
        out = teacher(input_ids=input_ids, output_hidden_states=output_hidden_states, use_cache=False)
        logits = out.logits.float()
        if total is not None and logits.shape[-1] != total.shape[-1]:
            raise ValueError(f"teachers disagree on vocabulary size: {logits.shape[-1]} vs {total.shape[-1]}")
        total = w * logits if total is None else total + w * logits
        hidden.append(out.hidden_states)
    return (total, hidden) if output_hidden_states else total

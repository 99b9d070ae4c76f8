"""Load a model to evaluate: an HF causal-LM dir, a training output dir, or a DeepSpeed checkpoint."""
import json
import os

import torch

from babylm_ds.models.manifest import loading, verify_model_dir

CHECKSUMS = "checksums.json"  # a sealed checkpoint's listing (training.guard)


def _has(d, name):
    return os.path.isfile(os.path.join(d, name))


def _find_up(path, name, levels=3):
    """First of `path`, its parents, or their `final/` subdir that holds file `name`."""
    for _ in range(levels):
        for d in (path, os.path.join(path, "final")):
            if _has(d, name):
                return d
        path = os.path.dirname(path)
    return None


def _deepspeed_ckpt(path):
    """(checkpoint dir, tag) when `path` is a DeepSpeed checkpoint dir (with `latest`), a tag dir in
    one, or a training output dir holding `checkpoints/`; else None."""
    for ckpt in (path, os.path.join(path, "checkpoints")):
        if _has(ckpt, "latest"):
            with open(os.path.join(ckpt, "latest")) as f:
                return ckpt, f.read().strip()
    if any(n.endswith("model_states.pt") for n in os.listdir(path)):
        return os.path.dirname(path), os.path.basename(path)
    return None


def _empty_model(ckpt_dir):
    """(model with the checkpoint's architecture, tokenizer dir): from the nearest config.json, else
    by re-running the training launcher's model construction from the run's args.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg_dir := _find_up(ckpt_dir, "config.json"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg_dir)), _find_up(ckpt_dir, "tokenizer_config.json")
    run_dir = _find_up(ckpt_dir, "args.json")
    if run_dir is None:
        return None, None
    with open(os.path.join(run_dir, "args.json")) as f:
        run = json.load(f)
    from babylm_ds.data import load_meta
    from babylm_ds.models import model_from_arg, parse_overrides

    model = model_from_arg(run["model"], load_meta(run["data"])["vocab_size"], parse_overrides(run["model_config"]))
    return model, os.path.join(run["data"], "tokenizer")


def load_model(path, device="cpu", dtype=None, verify=True):
    """(model, tokenizer) in eval mode from `path`, its files verified first (`verify=False`: --no-verify):

    - an HF dir (config.json + weights + tokenizer files), e.g. a trainer's `OUT/final/`;
    - a training output dir `OUT` (uses `OUT/final/`, else its newest DeepSpeed checkpoint);
    - a DeepSpeed checkpoint dir (`OUT/checkpoints`, with `latest`) or a tag dir in it: ZeRO shards are
      merged with deepspeed's zero_to_fp32; the architecture comes from the nearest config.json up
      the tree, else from the run's `args.json` (model preset + overrides, tokenizer of its --data).
    Verified: an HF dir against its manifest.json, a checkpoint against its checksums.json (models.manifest);
    any error of the libraries while loading is one line (a ValueError).
    """
    import babylm_ds.models  # noqa: F401  (registers BabyHGRN with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path {path} does not exist")
    hf_dir = path if _has(path, "config.json") else os.path.join(path, "final")
    if _has(hf_dir, "config.json"):
        verify_model_dir(hf_dir, verify)
        with loading(hf_dir):
            model = AutoModelForCausalLM.from_pretrained(hf_dir)
        tok_dir = _find_up(hf_dir, "tokenizer_config.json")
    else:
        found = _deepspeed_ckpt(path)
        with loading(path):
            model, tok_dir = _empty_model(found[0]) if found else (None, None)
        if model is None:
            raise ValueError(f"{path} is neither an HF model dir (config.json) nor a DeepSpeed checkpoint "
                             "(a dir with `latest`, or a tag dir with *model_states.pt) of a run with config.json or args.json")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        verify_model_dir(os.path.join(*found), verify, CHECKSUMS)
        with loading(path):
            state = get_fp32_state_dict_from_zero_checkpoint(found[0], tag=found[1])
        missing, unexpected = model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
        if getattr(model.config, "tie_word_embeddings", False):
            missing = [k for k in missing if k != "lm_head.weight"]
        unexpected = [k for k in unexpected if not k.startswith("kd_proj.")]  # distillation-only projections
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not match its model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.tie_weights()
    if tok_dir is None:
        raise ValueError(f"no tokenizer (tokenizer_config.json) found with {path}")
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    with loading(tok_dir):
        return model.eval(), AutoTokenizer.from_pretrained(tok_dir)


def resolve_device(device=None):
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

"""Load a model to evaluate: an HF causal-LM dir, a training output dir, or a DeepSpeed checkpoint."""
import os

import torch

from babylm_ds.models.manifest import CHECKSUMS, loading, verify_model_dir


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
    by re-running the training launcher's model construction from the run's config.yaml."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg_dir := _find_up(ckpt_dir, "config.json"):
        return (AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg_dir)),
                _find_up(ckpt_dir, "tokenizer_config.json"))
    run_dir = _find_up(ckpt_dir, "config.yaml")
    if run_dir is None:
        return None, None
    import yaml

    from babylm_ds.config import from_dict
    from babylm_ds.data import load_meta
    from babylm_ds.models import model_from_arg

    with open(os.path.join(run_dir, "config.yaml")) as f:
        cfg = from_dict(yaml.safe_load(f))
    model = model_from_arg(cfg.model.name, load_meta(cfg.data.dir)["vocab_size"], cfg.model.config)
    return model, os.path.join(cfg.data.dir, "tokenizer")


def load_model(path, device="cpu", dtype=None, verify=True):
    """(model, tokenizer) in eval mode from `path`, its files verified first (`verify=False`: --no-verify):

    - an HF dir (config.json + weights + tokenizer files), e.g. a trainer's `OUT/final/`;
    - a training output dir `OUT` (uses `OUT/final/`, else its newest DeepSpeed checkpoint);
    - a DeepSpeed checkpoint dir (`OUT/checkpoints`, with `latest`) or a tag dir in it: ZeRO shards are
      merged with deepspeed's zero_to_fp32; the architecture comes from the nearest config.json up
      the tree, else from the run's `config.yaml` (model preset + overrides, tokenizer of its --data).
    Verified: an HF dir against its manifest.json, a checkpoint against its checksums.json (models.manifest);
    any error of the libraries while loading is one line (a ValueError).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import babylm_ds.models  # noqa: F401  (registers BabyHGRN with the Auto classes)

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
                             "(a dir with `latest`, or a tag dir with *model_states.pt) of a run with config.json "
                             "or config.yaml")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        verify_model_dir(os.path.join(*found), verify, CHECKSUMS)
        with loading(path):
            state = get_fp32_state_dict_from_zero_checkpoint(found[0], tag=found[1])
        missing, unexpected = model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()},
                                                    strict=False)
        if getattr(model.config, "tie_word_embeddings", False):
            missing = [k for k in missing if k != "lm_head.weight"]
        unexpected = [k for k in unexpected if not k.startswith("kd_proj.")]  # distillation-only projections
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not match its model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        model.tie_weights()
    if tok_dir is None:
        raise ValueError(f"no tokenizer (tokenizer_config.json) found with {path}")
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    with loading(tok_dir):
        return model.eval(), AutoTokenizer.from_pretrained(tok_dir)


def load_classifier(path, num_labels, device="cpu", verify=True):
    """(model, tokenizer) to fine-tune: the HF model dir `path` (or `path/final`) in fp32 with a new
    `num_labels`-way head (`AutoModelForSequenceClassification`); verified and loaded as by `load_model`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    from transformers.utils import logging

    import babylm_ds.models  # noqa: F401  (registers the project's families)

    path = os.path.abspath(os.fspath(path))
    hf_dir = path if _has(path, "config.json") else os.path.join(path, "final")
    if not _has(hf_dir, "config.json"):
        raise ValueError(f"{path} is not an exported HF model dir (no config.json in it or in final/)")
    tok_dir = _find_up(hf_dir, "tokenizer_config.json")
    if tok_dir is None:
        raise ValueError(f"no tokenizer (tokenizer_config.json) found with {path}")
    verify_model_dir(hf_dir, verify)
    with loading(hf_dir):
        config = AutoConfig.from_pretrained(hf_dir)
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ValueError(f"{hf_dir}: transformers has no sequence-classification class for model_type "
                         f"{config.model_type!r} (Mamba has none); "
                         "fine-tune a BabyHGRN, BabyLSTM, Llama or GPT-2 model")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the new head's "newly initialized" report
    try:
        with loading(hf_dir):
            model = AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=num_labels,
                                                                       dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    with loading(tok_dir):
        return model.to(device), AutoTokenizer.from_pretrained(tok_dir)


def model_name(path):
    """A model's name in reports: its dir name, or the run's for a trainer's `RUN/final`."""
    path = os.path.normpath(os.path.abspath(path))
    return os.path.basename(os.path.dirname(path) if os.path.basename(path) == "final" else path)


def resolve_device(device=None):
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

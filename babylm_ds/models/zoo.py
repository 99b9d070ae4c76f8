"""Teacher/student model zoo: named presets -> HF causal LMs (Llama, GPT-2, BabyHGRN, Mamba, BabyLSTM).

`python -m babylm_ds.models.zoo` prints every preset with its parameter count (built on the meta device).
"""
import argparse
import os

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

from babylm_ds.models.babyhgrn import BabyHGRNConfig, BabyHGRNForCausalLM
from babylm_ds.models.lstm import BabyLSTMConfig, BabyLSTMForCausalLM
from babylm_ds.models.manifest import loading, verify_model_dir

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "gpt2": (GPT2Config, GPT2LMHeadModel),
    "babyhgrn": (BabyHGRNConfig, BabyHGRNForCausalLM),
    "mamba": (MambaConfig, MambaForCausalLM),  # without mamba_ssm: transformers' pure-PyTorch path (runs on CPU)
    "lstm": (BabyLSTMConfig, BabyLSTMForCausalLM),
}
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _llama(d, layers, heads, ffn, tie=False):
    return dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                max_position_embeddings=2048, tie_word_embeddings=tie)


def _gpt2(d, layers, heads, ffn=None):
    return dict(n_embd=d, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=2048)


def _hgrn(d, layers, expand_ratio=128, tie=False, **more):
    return dict(hidden_size=d, num_hidden_layers=layers, expand_ratio=expand_ratio, tie_word_embeddings=tie, **more)


def _mamba(d, layers, tie=True):
    # use_mambapy: without mamba_ssm, training takes mamba.py's parallel scan (5x faster on CPU than the token loop)
    return dict(hidden_size=d, num_hidden_layers=layers, tie_word_embeddings=tie, use_mambapy=True)


def _lstm(d, cell, layers, tie=False):
    return dict(hidden_size=d, intermediate_size=cell, num_hidden_layers=layers, tie_word_embeddings=tie)


# name -> family, role hint, config kwargs (vocab 16000 and pad/bos/eos = 0/1/2 are added by build_model).
# `<family>-cpu` and `<family>-360m` are two groups of matched parameter counts (within 5% at vocab 16000) for
# architecture comparisons: 4.8M (width 192, tied embeddings; CPU-sized) and the BabyHGRN paper's 360M.
PRESETS = {
    "babyllama-58m": dict(family="llama", role="student", config=_llama(512, 16, 8, 1024)),
    "babyhgrn-58m": dict(family="babyhgrn", role="student",  # = the above
                         config=_hgrn(512, 16, intermediate_size=1024)),
    "llama-360m": dict(family="llama", role="teacher", config=_llama(1024, 24, 8, 3072)),
    "gpt2-705m": dict(family="gpt2", role="teacher", config=_gpt2(1536, 24, 16)),
    "llama-16m": dict(family="llama", role="student", config=_llama(256, 8, 8, 1024)),
    "gpt2-97m": dict(family="gpt2", role="student", config=_gpt2(768, 12, 12)),
    "babyhgrn-360m": dict(family="babyhgrn", role="student", config=_hgrn(1024, 26)),
    "babyhgrn-1b": dict(family="babyhgrn", role="teacher", config=_hgrn(2048, 18)),
    "gpt2-360m": dict(family="gpt2", role="student", config=_gpt2(1024, 27, 16)),
    "mamba-360m": dict(family="mamba", role="student", config=_mamba(1024, 52)),
    "lstm-360m": dict(family="lstm", role="student", config=_lstm(1024, 8832, 4)),
    "llama-cpu": dict(family="llama", role="student", config=_llama(192, 4, 4, 512, tie=True)),
    "gpt2-cpu": dict(family="gpt2", role="student", config=_gpt2(192, 4, 4, 512)),
    "babyhgrn-cpu": dict(family="babyhgrn", role="student", config=_hgrn(192, 4, expand_ratio=32, tie=True)),
    "mamba-cpu": dict(family="mamba", role="student", config=_mamba(192, 7)),
    "lstm-cpu": dict(family="lstm", role="student", config=_lstm(192, 512, 2, tie=True)),
    "llama-tiny": dict(family="llama", role="test", config=_llama(128, 4, 4, 512, tie=True)),
    "gpt2-tiny": dict(family="gpt2", role="test", config=_gpt2(128, 4, 4)),
    "babyhgrn-tiny": dict(family="babyhgrn", role="test", config=_hgrn(128, 4, expand_ratio=32, tie=True)),
    "mamba-tiny": dict(family="mamba", role="test", config=_mamba(128, 4)),
    "lstm-tiny": dict(family="lstm", role="test", config=_lstm(128, 256, 2, tie=True)),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def build_config(name: str, vocab_size: int = 16000, **overrides):
    """The transformers config of preset `name`; `overrides` replace/add config fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    config_cls = FAMILIES[preset["family"]][0]
    return config_cls(**{**preset["config"], "vocab_size": vocab_size, **SPECIAL_IDS, **overrides})


def build_model(name: str, vocab_size: int = 16000, **overrides):
    """A freshly initialised causal LM for preset `name` (same builder for teacher and student roles)."""
    config = build_config(name, vocab_size, **overrides)
    return FAMILIES[PRESETS[name]["family"]][1](config)


def count_parameters(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def check_model_arg(name, vocab_size, overrides, verify=False):
    """ValueError unless --model names a preset or an HF dir whose vocabulary is the data's `vocab_size`
    (and, with `verify`, whose files match its manifest.json), and the --model-config overrides leave the
    vocabulary alone (it comes from the data)."""
    if "vocab_size" in overrides:
        raise ValueError(f"--model-config vocab_size={overrides['vocab_size']}: the vocabulary size comes from the "
                         f"data's tokenizer ({vocab_size}); drop it")
    if os.path.isdir(name):
        verify_model_dir(name, verify)
        with loading(name):
            config = AutoConfig.from_pretrained(name)
        if config.vocab_size != vocab_size:
            raise ValueError(f"--model {name} has vocab_size {config.vocab_size}, the data {vocab_size}: it was "
                             "trained with another tokenizer")
    elif name not in PRESETS:
        raise ValueError(f"--model {name!r}: not a directory nor a preset ({', '.join(preset_names())})")


def model_from_arg(name, vocab_size, overrides):
    """The model a launcher's --model names: a saved HF directory, or a preset built for `vocab_size`."""
    check_model_arg(name, vocab_size, overrides)
    if os.path.isdir(name):
        with loading(name):
            return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **overrides)
    return build_model(name, vocab_size=vocab_size, **overrides)


def main(argv=None):
    parser = argparse.ArgumentParser(description="List the model presets with their parameter counts.")
    parser.add_argument("--vocab-size", type=int, default=16000)
    args = parser.parse_args(argv)
    print(f"{'preset':<15} {'family':<9} {'role':<8} {'params':>14} {'M':>8}")
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            n = count_parameters(build_model(name, args.vocab_size))
        print(f"{name:<15} {preset['family']:<9} {preset['role']:<8} {n:>14,} {n / 1e6:>8.1f}")


if __name__ == "__main__":
    main()

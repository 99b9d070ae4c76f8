"""`babylm-ds generate`: continue a prompt with `model.generate` (BabyHGRN uses its recurrent cache)."""
import argparse
import contextlib
import sys

import torch

from babylm_ds.models.manifest import add_verify_arg

from .load import load_model, resolve_device
from .zeroshot import bos_id


def generate(model, tokenizer, prompt, max_new_tokens=40, greedy=False, temperature=1.0, top_k=50, top_p=1.0,
             num_samples=1, seed=0):
    """List of `num_samples` continuations (text after the prompt); the prompt is prefixed with BOS."""
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError("max_new_tokens and num_samples must be >= 1")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature} (use --greedy)")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.tensor([[bos_id(model, tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"]],
                       device=device)
    sampling = {} if greedy else {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=not greedy, num_return_sequences=1 if greedy else num_samples, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, use_cache=True, **sampling)
    return [tokenizer.decode(seq[ids.shape[1]:], skip_special_tokens=True) for seq in out]


def build_parser():
    p = argparse.ArgumentParser(prog="babylm-ds generate", description=__doc__)
    p.add_argument("--model", required=True, help="HF model dir, training output dir, or DeepSpeed checkpoint dir")
    add_verify_arg(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampling)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    return p


def main(argv=None):
    from transformers.utils import logging

    args = build_parser().parse_args(argv)
    logging.disable_progress_bar()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for results (deepspeed logs there)
        model, tokenizer = load_model(args.model, device=resolve_device(args.device), verify=not args.no_verify)
    texts = generate(model, tokenizer, args.prompt, args.max_new_tokens, args.greedy, args.temperature, args.top_k,
                     args.top_p, args.num_samples, args.seed)
    for text in texts:
        print(args.prompt + text)
    return 0


if __name__ == "__main__":
    from babylm_ds.utils.cli import run_cli
    sys.exit(run_cli(main, prog="babylm-ds generate"))

"""Perplexity of a causal LM over a prepared data dir's split (packed windows, as in training)."""
import math

import torch
from tqdm.auto import tqdm

from .zeroshot import model_device


@torch.no_grad()
def perplexity(model, data_dir, split="dev", batch_size=16, max_seqs=None, device=None, progress=False,
               per_sequence=False):
    """{"loss": mean next-token NLL (nats), "perplexity": exp(loss), "tokens": scored tokens}, and with
    `per_sequence` the mean NLL of every window ("sequence_losses", for bootstrap intervals)."""
    from babylm_ds.data import PackedDataset

    ds = PackedDataset(data_dir, split=split)
    n = len(ds) if max_seqs is None else min(len(ds), max_seqs)
    if n == 0:
        raise ValueError(f"split {split!r} of {data_dir} has no sequences")
    device = model_device(model, device)
    total, count, seq_losses = 0.0, 0, []
    was_training = model.training
    model.eval()
    try:
        for b in tqdm(range(0, n, batch_size), desc=f"ppl {split}", disable=not progress, leave=False):
            ids = torch.stack([ds[i]["input_ids"] for i in range(b, min(b + batch_size, n))]).to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
            total += nll.sum().item()
            count += ids[:, 1:].numel()
            seq_losses += nll.view(len(ids), -1).mean(1).tolist()
    finally:
        model.train(was_training)
    out = {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}
    return {**out, "sequence_losses": seq_losses} if per_sequence else out

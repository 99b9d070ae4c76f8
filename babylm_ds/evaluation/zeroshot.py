"""Zero-shot minimal-pair scoring (BabyLM 2024 rules).

A text is scored as the sum of its token log-probs conditioned on BOS (and on the prefix, for
EWoK): no length normalisation. A pair is right when score(good) >= score(bad) (ties count as
right); a paradigm's accuracy is the mean over its pairs, a benchmark's score the unweighted mean
over paradigms, and "macro" the mean over blimp / supplement / ewok.
"""
import torch
from tqdm.auto import tqdm

from .data import BENCHMARKS, load_tasks


def bos_id(model, tokenizer):
    for tid in (tokenizer.bos_token_id, getattr(model.config, "bos_token_id", None), tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise ValueError("tokenizer and model config define no BOS (or EOS) token to condition on")


def model_device(model, device=None):
    """`device`, or the device the model's parameters are on."""
    return torch.device(device) if device is not None else next(model.parameters()).device


@torch.no_grad()
def score_texts(model, tokenizer, texts, batch_size=64, device=None, progress=False):
    """log p(cont | BOS + prefix) summed over the continuation's tokens, for each (prefix, cont).

    Prefix and continuation are tokenized separately (no special tokens) and concatenated after
    BOS. Sequences are length-sorted and right-padded: causal models never see the padding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bos, pad = bos_id(model, tokenizer), tokenizer.pad_token_id or 0
    texts = list(texts)
    enc = lambda xs: tokenizer(xs, add_special_tokens=False)["input_ids"] if xs else []  # noqa: E731
    prefixes = enc([p for p, _ in texts])
    conts = enc([c for _, c in texts])
    seqs = [[bos] + p + c for p, c in zip(prefixes, conts, strict=True)]
    starts = [1 + len(p) for p in prefixes]
    device = model_device(model, device)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    scores = [0.0] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        for b in tqdm(range(0, len(order), batch_size), desc="scoring", disable=not progress, leave=False):
            idx = order[b:b + batch_size]
            width = len(seqs[idx[0]])
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, :len(seqs[i])] = torch.tensor(seqs[i])
            ids = ids.to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = ids[:, 1:]
            logp = logits.gather(-1, target[..., None])[..., 0] - logits.logsumexp(-1)
            pos = torch.arange(width - 1, device=device)
            start = torch.tensor([starts[i] - 1 for i in idx], device=device)
            end = torch.tensor([len(seqs[i]) - 1 for i in idx], device=device)
            mask = (pos >= start[:, None]) & (pos < end[:, None])
            for i, s in zip(idx, (logp * mask).sum(-1).tolist(), strict=True):
                scores[i] = s
    finally:
        model.train(was_training)
    return scores


def item_decisions(model, tokenizer, tasks=BENCHMARKS, limit=None, batch_size=64, data_dir=None, device=None,
                   progress=False):
    """{bench: {paradigm: [True where the good side scores at least as high, ...]}} in item order.

    `tasks`: see `data.load_tasks` (selecting ewok adds "ewok_swap"); `limit`: items per paradigm."""
    items = load_tasks(tasks, limit, data_dir)
    keys = {}
    for paradigms in items.values():
        for pairs in paradigms.values():
            for pa, ca, pb, cb in pairs:
                keys.setdefault((pa, ca), len(keys))
                keys.setdefault((pb, cb), len(keys))
    scores = score_texts(model, tokenizer, list(keys), batch_size, device, progress)
    return {bench: {p: [scores[keys[a[:2]]] >= scores[keys[a[2:]]] for a in pairs] for p, pairs in paradigms.items()}
            for bench, paradigms in items.items()}


def accuracies(decisions):
    """`evaluate_model`'s result from `item_decisions`."""
    out = {}
    for bench, paradigms in decisions.items():
        acc = {p: sum(right) / len(right) for p, right in paradigms.items() if right}
        out[bench] = {"mean": sum(acc.values()) / len(acc), "paradigms": acc,
                      "pairs": sum(len(right) for right in paradigms.values())}
    if main := [out[b]["mean"] for b in BENCHMARKS if b in out]:
        out["macro"] = sum(main) / len(main)
    return out


def evaluate_model(model, tokenizer, tasks=BENCHMARKS, limit=None, batch_size=64, data_dir=None, device=None,
                   progress=False):
    """Zero-shot accuracies: {bench: {"mean": acc, "paradigms": {name: acc}, "pairs": n}, ..., "macro": x}.

    `tasks`: see `data.load_tasks` (selecting ewok adds "ewok_swap"); `limit`: items per paradigm."""
    return accuracies(item_decisions(model, tokenizer, tasks, limit, batch_size, data_dir, device, progress))

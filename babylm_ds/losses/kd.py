"""Knowledge-distillation losses: α·CE + (1−α)·T²·KL(teacher_T ‖ student_T).

Offline targets are the teacher's top-k log-probs at T=1 plus the log of the tail mass left outside
the top-k. The KL is taken over k+1 categories: the k kept ids and one "tail" bucket holding the
rest of the vocabulary on both sides (the student's tail is its exact mass outside the k ids), so
no probability is silently renormalised away. With k = vocab the loss equals the full-vocab one.

Temperature at load time (``tempered_teacher``): kept ids get p_i^{1/T} exactly. The tail's tempered
mass Σ_tail p_j^{1/T} is not stored; we model the tail as n equal tokens of mass r/n, giving
n^{1−1/T}·r^{1/T}. Every tail token is ≤ p_k (the smallest kept probability), so for T > 1 the truth
lies between n = r/p_k ("flat", lower bound) and n = V−k ("uniform", upper bound: the maximum-entropy
spread, the same one `cache_kl` uses to expand a cache to the full vocabulary). Default "uniform":
on trained tiny teachers (vocab 1000, k=64, T=2) it costs 0.012 nats/token of KL error over the k+1
categories vs 0.10 for "flat" and 0.95 for "bucket" (n = 1, the tail as one token, r^{1/T}). All are
exact at T = 1; `cache_logits.py` measures each on a sample and stores it in the manifest.

Reductions: "token" averages the KL over all B·T positions (same scale as the CE). "batchmean"
reproduces BabyLlama's ``nn.KLDivLoss(reduction="batchmean")`` on [B, T, V] tensors, which divides
the summed KL by B only, i.e. weights the KD term T_seq times (128× at seq_len 128) more than CE.
"""
import math

import torch
import torch.nn.functional as F

TAIL_MODES = ("uniform", "flat", "bucket")


def causal_ce(logits, labels):
    """HF-style shifted next-token cross-entropy, mean over non-ignored tokens."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def tempered_teacher(logprobs, tail, temperature, vocab_size, tail_mode="uniform"):
    """Teacher log-probs over k+1 categories (k ids, tail last) at `temperature` from T=1 top-k + tail."""
    if tail_mode not in TAIL_MODES:
        raise ValueError(f"tail_mode must be one of {TAIL_MODES}, got {tail_mode!r}")
    logprobs, tail = logprobs.float(), tail.float()
    a = 1.0 / temperature
    k = logprobs.shape[-1]
    log_tail_t = a * tail
    if tail_mode != "bucket" and k < vocab_size and a != 1.0:
        log_n = torch.full_like(tail, math.log(vocab_size - k))
        if tail_mode == "flat":
            log_n = torch.minimum(log_n, (tail - logprobs.min(-1).values).clamp_min(0.0))
        log_tail_t = log_tail_t + (1.0 - a) * log_n
    joint = torch.cat([a * logprobs, log_tail_t.unsqueeze(-1)], -1)
    return joint - torch.logsumexp(joint, -1, keepdim=True)


def _kl_terms(log_q, log_s):
    """Per-position Σ q (log q − log s) over the last dim, with 0·log 0 = 0."""
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_s), torch.zeros_like(q)).sum(-1)


def _reduce(kl, reduction):
    if reduction == "token":
        return kl.mean()
    if reduction == "batchmean":
        return kl.sum() / kl.shape[0]
    raise ValueError(f"reduction must be 'token' or 'batchmean', got {reduction!r}")


def _bucketed(log_p, ids):
    """A full log-distribution [..., V] as k+1 categories: the ids' log-probs, then the tail's."""
    kept = torch.zeros_like(log_p, dtype=torch.bool).scatter_(-1, ids, True)
    log_tail = log_p.masked_fill(kept, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([log_p.gather(-1, ids), log_tail], -1)


def topk_kl(student_logits, ids, logprobs, tail, temperature=2.0, tail_mode="uniform"):
    """KL(teacher_T ‖ student_T) per position [B, T] over the k cached ids + the tail bucket."""
    V, k = student_logits.shape[-1], ids.shape[-1]
    log_s = F.log_softmax(student_logits.float() / temperature, -1)
    log_q = tempered_teacher(logprobs, tail, temperature, V, tail_mode)
    ids = ids.long()
    if k == V:  # no tail (a logsumexp over no ids would give NaN gradients)
        return _kl_terms(log_q[..., :k], log_s.gather(-1, ids))
    return _kl_terms(log_q, _bucketed(log_s, ids))


def full_kl(student_logits, teacher_logits, temperature=2.0):
    """KL(softmax(t/T) ‖ softmax(s/T)) per position [B, T] over the full vocabulary."""
    log_s = F.log_softmax(student_logits.float() / temperature, -1)
    log_q = F.log_softmax(teacher_logits.float() / temperature, -1)
    return _kl_terms(log_q, log_s)


def _combine(ce, kl, alpha, temperature, reduction):
    kd = temperature ** 2 * _reduce(kl, reduction)
    return alpha * ce + (1.0 - alpha) * kd, ce, kd


def kd_loss(student_logits, teacher_topk_ids, teacher_topk_logprobs, tail_logprob, labels,
            alpha=0.5, temperature=2.0, reduction="token", tail_mode="uniform"):
    """Offline KD against cached top-k + tail. Returns (loss, ce, kd) with kd already scaled by T²."""
    kl = topk_kl(student_logits, teacher_topk_ids, teacher_topk_logprobs, tail_logprob, temperature, tail_mode)
    return _combine(causal_ce(student_logits, labels), kl, alpha, temperature, reduction)


def kd_loss_full(student_logits, teacher_logits, labels, alpha=0.5, temperature=2.0, reduction="token"):
    """Online KD against full teacher logits (e.g. the mean of an ensemble's raw logits)."""
    kl = full_kl(student_logits, teacher_logits, temperature)
    return _combine(causal_ce(student_logits, labels), kl, alpha, temperature, reduction)


def hidden_mse(student_hidden, teacher_hidden, projections, layer_map):
    """Deep supervision: mean over pairs (s, t) of MSE(proj(student_hidden[s]), teacher_hidden[t])."""
    losses = [F.mse_loss(proj(student_hidden[s]).float(), teacher_hidden[t].float())
              for proj, (s, t) in zip(projections, layer_map, strict=True)]
    return torch.stack(losses).mean()


def cache_kl(teacher_logits, ids, logprobs, tail, temperature=1.0, tail_mode="uniform"):
    """Error of a cached top-k+tail vs the full teacher at `temperature`, mean per position.

    Returns (full, coarse): `full` = KL(p_T ‖ q) with q the cached distribution spread over the
    vocabulary (kept ids exact, tail mass uniform over the other V−k ids); `coarse` = KL over the
    k+1 categories the loss sees, i.e. the error of the temperature approximation alone.
    """
    V, k = teacher_logits.shape[-1], ids.shape[-1]
    log_p = F.log_softmax(teacher_logits.float() / temperature, -1)
    log_q = tempered_teacher(logprobs, tail, temperature, V, tail_mode)
    ids = ids.long()
    coarse = _kl_terms(_bucketed(log_p, ids), log_q).mean().item()
    if k == V:
        return coarse, coarse
    spread = log_q[..., k:] - torch.log(torch.tensor(float(V - k)))
    log_q_full = spread.expand_as(log_p).scatter(-1, ids, log_q[..., :k])
    return _kl_terms(log_p, log_q_full).mean().item(), coarse

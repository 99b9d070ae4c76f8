"""Learning-rate schedule: linear warmup, then cosine / linear decay to `min_ratio`, or constant."""
import math

import torch


def lr_factor(step, total_steps, warmup_steps=0, schedule="cosine", min_ratio=0.1):
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def build_scheduler(optimizer, total_steps, warmup_steps=0, schedule="cosine", min_ratio=0.1):
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; use cosine, linear or constant")
    if not 0 <= min_ratio <= 1:
        raise ValueError(f"--min-lr-ratio must be in [0, 1], got {min_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, schedule, min_ratio))

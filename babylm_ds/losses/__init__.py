"""Distillation losses."""
from .kd import TAIL_MODES, cache_kl, causal_ce, full_kl, hidden_mse, kd_loss, kd_loss_full, tempered_teacher, topk_kl

__all__ = ["TAIL_MODES", "cache_kl", "causal_ce", "full_kl", "hidden_mse", "kd_loss", "kd_loss_full",
           "tempered_teacher", "topk_kl"]

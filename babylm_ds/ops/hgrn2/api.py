"""Public HGRN2 op: input checks and backend dispatch.

INITIAL VERSION (contract). Backends register a function with the signature
    fn(q, k, v, g, scale, initial_state, output_final_state) -> (o, final_state_or_None)
that is differentiable w.r.t. q, k, v, g, initial_state. Inputs reaching a backend are
already validated and contiguous; `scale` is a float; state is fp32 [B, H, K, V].
"""
import torch

from babylm_ds.ops.hgrn2.naive import naive_hgrn2


def _torch_backend(q, k, v, g, scale, initial_state, output_final_state):
    # TEMPORARY: replaced by the chunked torch implementation (chunk.py).
    o, s = naive_hgrn2(q, k, v, g, scale, initial_state, output_final_state)
    return o.to(q.dtype), (s.float() if s is not None else None)


def hgrn2(q, k, v, g, scale=None, initial_state=None, output_final_state=False, backend="auto"):
    """Chunked gated linear recurrence (HGRN2). Returns (o [B,T,H,V], final_state [B,H,K,V] or None)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _torch_backend(q, k, v, g, scale, initial_state, output_final_state)


def hgrn2_step(q, k, v, g, state):
    """One recurrent step for generation: q, k, g [B, H, K], v [B, H, V], state [B, H, K, V] fp32.

    Returns (o [B, H, V], new_state). scale = K^-0.5.
    """
    state = state * g.float().exp()[..., None] + k.float()[..., None] * v.float()[..., None, :]
    o = torch.einsum("bhk,bhkv->bhv", q.float(), state) * q.shape[-1] ** -0.5
    return o.to(q.dtype), state

"""Naive per-step HGRN2 recurrence: the oracle the tests compare every backend against."""
import torch


def naive_hgrn2(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """S_t = diag(exp g_t) S_{t-1} + k_t^T v_t ; o_t = scale * q_t S_t.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; state [B, H, K, V]. Computed step by step in
    float64 (or fp32 when the inputs are fp32 on a device without float64), autograd-friendly.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    acc = torch.float64 if q.device.type == "cpu" else torch.float32
    q, k, v, g = (x.to(acc) for x in (q, k, v, g))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    out = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(out, dim=1)
    return o, (S if output_final_state else None)

"""Naive per-step HGRN2 recurrence: the oracle the tests compare every backend against."""
import torch


def naive_hgrn2(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """S_t = diag(exp g_t) S_{t-1} + k_t^T v_t ; o_t = scale * q_t S_t.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; state [B, H, K, V]. With cu_seqlens (B = 1, offsets
    [N + 1]) the state restarts at each sequence start from initial_state[n] (or zeros) and the
    final states are [N, H, K, V]. Computed step by step in float64 (or fp32 when the inputs are fp32
    on a device without float64), autograd-friendly.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    acc = torch.float64 if q.device.type == "cpu" else torch.float32
    q, k, v, g = (x.to(acc) for x in (q, k, v, g))
    starts = [0] if cu_seqlens is None else [int(x) for x in cu_seqlens[:-1]]
    out, finals, S = [], [], None
    for t in range(T):
        if t in starts:
            if t:
                finals.append(S)
            n = starts.index(t)
            h0 = None if initial_state is None else (
                initial_state if cu_seqlens is None else initial_state[n:n + 1])
            S = q.new_zeros(B, H, K, V) if h0 is None else h0.to(acc)
        S = S * g[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(out, dim=1)
    return o, (torch.cat(finals + [S]) if output_final_state else None)

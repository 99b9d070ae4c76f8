"""HGRN2 through the compiled extension `babylm_ds._C` (backends "cpu" and "cuda")."""
import functools

import torch


def _load():
    try:
        from babylm_ds import _C
    except ImportError as e:
        return None, f"babylm_ds._C is not built ({e}); run `pip install --no-build-isolation -e .`"
    return _C, ""


_C, _REASON = _load()


@functools.lru_cache(maxsize=None)
def _cuda_selfcheck(device):
    """Compare the CUDA kernels once per device with the per-step oracle (fp32, forward and grads)."""
    from babylm_ds.ops.hgrn2.naive import naive_hgrn2

    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 70, 2, 16, 12
    q, k, g = (torch.randn(B, T, H, K, generator=gen) for _ in range(3))
    v, do = (torch.randn(B, T, H, V, generator=gen) for _ in range(2))
    g = -4 * g.abs()
    h0, dht = (torch.randn(B, H, K, V, generator=gen) for _ in range(2))
    ins = [x.double().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = naive_hgrn2(*ins[:4], 0.25, ins[4], True)
    ref = [o, ht, *torch.autograd.grad((o * do.double()).sum() + (ht * dht.double()).sum(), ins)]
    try:
        dev = [x.to(device) for x in (q, k, v, g, h0, do, dht)]
        o, ht = _C.hgrn2_fwd(*dev[:4], 0.25, dev[4], True)
        got = [o, ht, *_C.hgrn2_bwd(*dev[:4], 0.25, dev[4], dev[5], dev[6])]
    except RuntimeError as e:
        return False, f"CUDA kernels failed: {e}"
    for name, a, b in zip(("o", "ht", "dq", "dk", "dv", "dg", "dh0"), got, ref):
        err = (a.double().cpu() - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
        if not err < 1e-3:
            return False, f"CUDA kernel self-check failed: {name} relative error {err:.2e}"
    return True, ""


def ext_status(device=None):
    """(available, reason): whether `babylm_ds._C` imports and, for a CUDA device, whether it was built
    with CUDA kernels and they pass a one-off self-check against the oracle on that device."""
    if _C is None:
        return False, _REASON
    if device is not None and torch.device(device).type == "cuda":
        if not _C.has_cuda():
            return False, "babylm_ds._C was built without CUDA (reinstall with BABYLM_DS_CUDA=1)"
        return _cuda_selfcheck(torch.device(device))
    return True, ""


class HGRN2Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        o, ht = _C.hgrn2_fwd(q, k, v, g, scale, initial_state, output_final_state)
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = _C.hgrn2_bwd(q, k, v, g, ctx.scale, h0, do.contiguous(),
                                           None if dht is None else dht.contiguous())
        return dq, dk, dv, dg, None, dh0, None


def hgrn2_ext(q, k, v, g, scale, initial_state, output_final_state):
    """HGRN2 via the C++/CUDA extension: (o [B,T,H,V], final_state [B,H,K,V] or None)."""
    ok, reason = ext_status(q.device)
    if not ok:
        raise RuntimeError(reason)
    return HGRN2Function.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state))

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
    """The extension's kernels under autograd; `emu` (a mode of `hgrn2_emu`) runs the GPU kernels'
    host emulation instead."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, emu):
        args = (q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
        o, ht = _C.hgrn2_fwd(*args) if emu is None else _C.hgrn2_emu_fwd(*args, emu)
        ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens)
        ctx.scale, ctx.emu = scale, emu
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, cu = ctx.saved_tensors
        args = (q, k, v, g, ctx.scale, h0, do.contiguous(), None if dht is None else dht.contiguous(), cu)
        dq, dk, dv, dg, dh0 = _C.hgrn2_bwd(*args) if ctx.emu is None else _C.hgrn2_emu_bwd(*args, ctx.emu)
        return dq, dk, dv, dg, None, dh0, None, None, None


def hgrn2_ext(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens=None):
    """HGRN2 via the C++/CUDA extension: (o [B,T,H,V], final_state [N,H,K,V] or None). cu_seqlens
    (int32 offsets [N + 1] of packed B = 1 inputs, fla's convention; CUDA only, may stay on the CPU)
    splits the rows into N sequences with their own initial / final states."""
    ok, reason = ext_status(q.device)
    if not ok:
        raise RuntimeError(reason)
    if cu_seqlens is not None and q.device.type != "cuda":
        raise NotImplementedError("hgrn2 cpu kernels take no cu_seqlens; run the sequences one by one")
    return HGRN2Function.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state), cu_seqlens, None)


def hgrn2_emu(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens=None, mode="tf32x3"):
    """The CUDA kernels' code run on the CPU by warp emulation (tests): mode "bf16", "fp16" (mma
    operand precision; fp32 inputs), "tf32x3" (the fp32 kernels) or "fp64" (fp64 math, gradcheck)."""
    if _C is None:
        raise RuntimeError(_REASON)
    return HGRN2Function.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state), cu_seqlens, mode)

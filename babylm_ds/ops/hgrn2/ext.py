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


SELFCHECK_TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}  # relative to the oracle


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def _cuda_selfcheck(device, dtype):
    """Run the CUDA kernels once per device and dtype (forward and all gradients) against the float64
    per-step oracle on the same (rounded) inputs, synchronizing before reading anything back so that an
    asynchronous fault is caught here. (ok, one-line reason naming backend, dtype and what failed)."""
    from babylm_ds.ops.hgrn2.naive import naive_hgrn2

    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 70, 2, 16, 24  # rows 16-byte aligned in every dtype: the cp.async path
    q, k, g = (torch.randn(B, T, H, K, generator=gen) for _ in range(3))
    v, do = (torch.randn(B, T, H, V, generator=gen) for _ in range(2))
    q, k, v, g, do = (x.to(dtype) for x in (q, k, v, -4 * g.abs(), do))
    h0, dht = (torch.randn(B, H, K, V, generator=gen) for _ in range(2))
    ins = [x.double().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = naive_hgrn2(*ins[:4], 0.25, ins[4], True)
    ref = [o, ht, *torch.autograd.grad((o * do.double()).sum() + (ht * dht.double()).sum(), ins)]
    what = f"hgrn2 cuda self-check ({str(dtype).removeprefix('torch.')} on {device})"
    try:
        dev = [x.to(device) for x in (q, k, v, g, h0, do, dht)]
        o, ht = _C.hgrn2_fwd(*dev[:4], 0.25, dev[4], True)
        got = [o, ht, *_C.hgrn2_bwd(*dev[:4], 0.25, dev[4], dev[5], dev[6])]
        _sync(device)
        got = [x.double().cpu() for x in got]
    except Exception as e:  # launch, resource and asynchronous faults alike
        msg = " ".join(str(e).split())[:300]
        return False, f"{what}: the kernels raised {type(e).__name__}: {msg}"
    for name, a, b in zip(("o", "ht", "dq", "dk", "dv", "dg", "dh0"), got, ref, strict=True):
        err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
        if not err < SELFCHECK_TOL[dtype]:
            return False, f"{what}: {name} relative error {err:.2e} >= {SELFCHECK_TOL[dtype]:.0e}"
    return True, ""


def ext_status(device=None, dtype=None):
    """(available, reason): whether `babylm_ds._C` imports and, for a CUDA device, whether it was built
    with CUDA kernels and they pass a one-off self-check against the oracle on that device, in `dtype`
    (default: each of float32, bfloat16 and float16)."""
    if _C is None:
        return False, _REASON
    if device is not None and torch.device(device).type == "cuda":
        if not _C.has_cuda():
            return False, "babylm_ds._C was built without CUDA (reinstall with BABYLM_DS_CUDA=1)"
        if dtype is not None and dtype not in SELFCHECK_TOL:
            return False, f"the CUDA kernels take float32, bfloat16 or float16, got {dtype}"
        for dt in (dtype,) if dtype is not None else SELFCHECK_TOL:
            ok, reason = _cuda_selfcheck(torch.device(device), dt)
            if not ok:
                return ok, reason
    return True, ""


class HGRN2Function(torch.autograd.Function):
    """The extension's kernels under autograd; `emu` (the mode and options of `hgrn2_emu`) runs the GPU
    kernels' host emulation instead."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, emu):
        args = (q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
        o, ht = _C.hgrn2_fwd(*args) if emu is None else _C.hgrn2_emu_fwd(*args, *emu)
        ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens)
        ctx.scale, ctx.emu = scale, emu
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, cu = ctx.saved_tensors
        args = (q, k, v, g, ctx.scale, h0, do.contiguous(), None if dht is None else dht.contiguous(), cu)
        dq, dk, dv, dg, dh0 = _C.hgrn2_bwd(*args) if ctx.emu is None else _C.hgrn2_emu_bwd(*args, *ctx.emu)
        return dq, dk, dv, dg, None, dh0, None, None, None


def hgrn2_ext(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens=None):
    """HGRN2 via the C++/CUDA extension: (o [B,T,H,V], final_state [N,H,K,V] or None). cu_seqlens
    (int32 offsets [N + 1] of packed B = 1 inputs, fla's convention; CUDA only, may stay on the CPU)
    splits the rows into N sequences with their own initial / final states."""
    ok, reason = ext_status(q.device, q.dtype)
    if not ok:
        raise RuntimeError(reason)
    if cu_seqlens is not None and q.device.type != "cuda":
        raise NotImplementedError("hgrn2 cpu kernels take no cu_seqlens; run the sequences one by one")
    return HGRN2Function.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state), cu_seqlens, None)


def hgrn2_emu(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens=None, mode="tf32x3", vec=None,
              grid_max=None, smem_optin=None):
    """The CUDA kernels' code run on the CPU by warp emulation (tests): mode "bf16", "fp16" (the kernels
    for those dtypes; inputs cast to them), "tf32x3" (the fp32 kernels) or "fp64" (fp64 math,
    gradcheck). vec=None loads with 16-byte cp.async where the launcher would (True forces it, and a
    misaligned piece raises); grid_max (x, y, z) folds the grids within smaller launch limits;
    smem_optin picks the kernel variants of a device with that shared memory per block."""
    if _C is None:
        raise RuntimeError(_REASON)
    emu = (mode, vec, None if grid_max is None else list(grid_max), smem_optin)
    return HGRN2Function.apply(q, k, v, g, float(scale), initial_state, bool(output_final_state), cu_seqlens, emu)

"""Public HGRN2 op: input checks, backend dispatch and the recurrent step for generation.

Every backend is a function fn(q, k, v, g, scale, initial_state, output_final_state) ->
(o, final_state_or_None), differentiable w.r.t. q, k, v, g and initial_state; it receives
validated contiguous inputs, a float scale and an fp32 state (float64 when the inputs are).
Backends in VARLEN also take packed sequences (keyword cu_seqlens); for the others hgrn2() runs
one call per sequence.

g (finite, <= 0) and the cu_seqlens values are checked on CPU tensors only: on a GPU the check
would cost a device sync per call. Set BABYLM_DS_DEBUG=1 to check GPU tensors too.

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py.
"""
import functools
import itertools
import logging
import os

import torch

from .chunk import acc_dtype, chunk_hgrn2

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch", "fla")
# `auto` tries the fastest correct backend first. GPU order measured in benchmarks/results/gpu_h200.md
# (H200, fwd+bwd, bf16 B8 H16 K=V=64 T 1024-16384 and fp32 B2 H4 T 512-8192): fla < triton < torch
# < cuda. A backend moves up only when a committed benchmark shows it faster.
AUTO = {"cuda": ("fla", "triton", "torch", "cuda"), "cpu": ("cpu", "torch")}
VARLEN = ("cuda", "triton", "fla")  # take cu_seqlens natively
_DIMS = {"B": "batch", "T": "time", "H": "head", "K": "key", "V": "value"}
_warned = set()


def _debug():
    return os.environ.get("BABYLM_DS_DEBUG") == "1"


@functools.cache
def _selfcheck(name, device, dtype, H, K, V):
    """(ok, reason): run backend `name` forward + backward once on a small input with this head
    layout (compiling its kernels) and compare with the torch backend; lets auto skip a broken setup."""
    fn = _load(name, device, dtype)[0]
    gen = torch.Generator().manual_seed(0)
    q, k, v, g = (torch.randn(1, 35, H, D, generator=gen) for D in (K, K, V, K))
    q, k, v, g = (x.to(device, dtype) for x in (q, k, v, -g.abs()))
    outs = []
    try:
        with torch.enable_grad():
            for f in (fn, chunk_hgrn2):
                ins = [x.clone().requires_grad_() for x in (q, k, v, g)]
                o, _ = f(*ins, K ** -0.5, None, False)
                o.float().pow(2).sum().backward()
                outs.append([o] + [x.grad for x in ins])
    except Exception as e:  # compilation, resource or launch errors of this setup
        msg = (str(e).strip().splitlines() or [""])[0]
        return False, f"self-check raised {type(e).__name__}: {msg}"
    tol = 1e-2 if dtype == torch.float32 else 5e-2
    for x, a, b in zip(("o", "dq", "dk", "dv", "dg"), *outs, strict=True):
        err = ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1)).item()
        if not err <= tol:
            return False, f"self-check mismatch in {x} (relative error {err:.2g})"
    return True, ""


def _load(name, device, dtype):
    """(fn, "") for a backend available for these inputs, else (None, reason)."""
    if name == "torch":
        return chunk_hgrn2, ""
    if name in ("cpu", "cuda"):
        if device.type != name:
            return None, f"backend {name!r} needs {name} tensors, got {device.type}"
        try:
            from babylm_ds.ops.hgrn2 import ext
        except ImportError as e:
            return None, f"babylm_ds.ops.hgrn2.ext cannot be imported ({e})"
        ok, reason = ext.ext_status(device)
        return (ext.hgrn2_ext, "") if ok else (None, reason)
    try:
        if name == "fla":
            from babylm_ds.ops.hgrn2.fla import fla_hgrn2 as fn, fla_status as status
        else:
            from babylm_ds.ops.hgrn2.triton import triton_hgrn2 as fn, triton_status as status
    except ImportError as e:
        return None, f"{name} cannot be imported ({e})"
    ok, reason = status(device, dtype)
    return (fn, "") if ok else (None, reason)


def _backend(name, q, v):
    """(name, fn) of the backend that runs these inputs."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name != "auto":
        fn, reason = _load(name, q.device, q.dtype)
        if fn is None:
            raise RuntimeError(f"hgrn2 backend {name!r} unavailable: {reason}")
        return name, fn
    device, reasons = q.device, []
    for cand in AUTO.get(device.type, ("torch",)):
        fn, reason = _load(cand, device, q.dtype)
        if fn is not None and cand in ("triton", "fla"):
            ok, reason = _selfcheck(cand, device, q.dtype, q.shape[-2], q.shape[-1], v.shape[-1])
            fn = fn if ok else None
        if fn is not None:
            if reasons and (device.type, cand) not in _warned:
                _warned.add((device.type, cand))
                logger.warning("hgrn2: using backend %r on %s (%s)", cand, device.type, "; ".join(reasons))
            return cand, fn
        reasons.append(f"{cand!r} unavailable: {reason}")


def _check_tensor(name, x, ndim, layout):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_offsets(cu_seqlens, q):
    """Validate cu_seqlens [N + 1] for packed q [1, T, H, K]; its values only on a CPU copy (or
    under BABYLM_DS_DEBUG=1), so that GPU offsets cost no sync."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or len(cu_seqlens) < 2 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError("cu_seqlens must be a 1-D int32/int64 tensor of N + 1 sequence offsets, got "
                        f"{cu_seqlens!r:.80}")
    if q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along T: batch size must be 1, "
                         f"got B = {q.shape[0]}")
    if cu_seqlens.device.type not in ("cpu", q.device.type):
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
    if cu_seqlens.device.type == "cpu" or _debug():
        offs = cu_seqlens.tolist()
        if offs[0] != 0 or offs[-1] != q.shape[1] or any(a >= b for a, b in itertools.pairwise(offs)):
            raise ValueError(f"cu_seqlens must rise strictly from 0 to T = {q.shape[1]} "
                             f"(no empty sequences), got {offs}")


def _check(q, k, v, g, state, step, cu_seqlens=None):
    nd, lead = (3, "[B, H") if step else (4, "[B, T, H")
    for name, x in (("q", q), ("k", k), ("g", g)):
        _check_tensor(name, x, nd, f"{lead}, K]")
    _check_tensor("v", v, nd, f"{lead}, V]")
    for name, x in (("k", k), ("v", v), ("g", g)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} dtype {x.dtype} differs from q dtype {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    for name, x in (("k", k), ("g", g)):
        if x.shape != q.shape:
            raise ValueError(f"{name} shape {tuple(x.shape)} must equal q shape {tuple(q.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"v shape {tuple(v.shape)} must match q shape {tuple(q.shape)} "
                         "up to the last dim")
    for d, n in zip("BHK" if step else "BTHK", q.shape, strict=True):
        if n == 0:
            raise ValueError(f"q, k, v, g have an empty {_DIMS[d]} dimension ({d} = 0)")
    if v.shape[-1] == 0:
        raise ValueError("v has an empty value dimension (V = 0)")
    if cu_seqlens is not None:
        _check_offsets(cu_seqlens, q)
    if g.device.type == "cpu" or _debug():
        lo, hi = torch.aminmax(g)  # one pass (a device sync on a GPU); NaN fails both comparisons
        if not bool((lo > float("-inf")) & (hi <= 0)):
            raise ValueError("g must be finite and <= 0 (it is the log of the forget gate)")
    if state is not None:
        name = "state" if step else "initial_state"
        _check_tensor(name, state, 4, "[B, H, K, V]" if cu_seqlens is None else "[N, H, K, V]")
        N = q.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
        shape = (N, q.shape[-2], q.shape[-1], v.shape[-1])
        if state.shape != shape:
            raise ValueError(f"{name} shape {tuple(state.shape)} must be "
                             f"({'B' if cu_seqlens is None else 'N'}, H, K, V) = {shape}")
        if state.device != q.device:
            raise ValueError(f"{name} is on {state.device} but q is on {q.device}")


def _per_sequence(fn, q, k, v, g, scale, initial_state, output_final_state, offsets):
    """Packed sequences through a backend without varlen support: one call per sequence."""
    outs = []
    for n, (s, e) in enumerate(itertools.pairwise(offsets)):
        h0 = None if initial_state is None else initial_state[n:n + 1]
        outs.append(fn(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], scale, h0, output_final_state))
    o, ht = zip(*outs, strict=True)
    return torch.cat(o, 1), (torch.cat(ht) if output_final_state else None)


def hgrn2(q, k, v, g, scale=None, initial_state=None, output_final_state=False, backend="auto",
          cu_seqlens=None):
    """Chunked HGRN2: S_t = diag(exp g_t) S_{t-1} + k_t^T v_t ; o_t = scale q_t S_t.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; g <= 0; scale defaults to K^-0.5; initial_state
    [B, H, K, V]. Returns (o [B, T, H, V] in q's dtype, final state [B, H, K, V] fp32 or None).
    cu_seqlens: N packed sequences (fla's convention): B = 1, int offsets [N + 1] from 0 to T, on
    the CPU (preferred: checked without a device sync) or q's device; states are then [N, H, K, V].
    backend: "auto" (the AUTO table), "cpu", "cuda", "triton", "torch" or "fla".
    """
    _check(q, k, v, g, initial_state, False, cu_seqlens)
    name, fn = _backend(backend, q, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if initial_state is not None:
        initial_state = initial_state.to(acc_dtype(q)).contiguous()
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    args = (q, k, v, g, scale, initial_state, bool(output_final_state))
    if cu_seqlens is None:
        return fn(*args)
    if name in VARLEN:
        return fn(*args, cu_seqlens=cu_seqlens.to(q.device, non_blocking=True) if name == "cuda"
                  else cu_seqlens)
    return _per_sequence(fn, *args, cu_seqlens.tolist())


def hgrn2_step(q, k, v, g, state=None, scale=None):
    """One recurrent step for generation: q, k, g [B, H, K], v [B, H, V], state [B, H, K, V] or None.

    Returns (o [B, H, V] in q's dtype, new_state [B, H, K, V] fp32).
    """
    _check(q, k, v, g, state, step=True)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    dtype, acc = q.dtype, acc_dtype(q)
    q, k, v, g = (x.to(acc) for x in (q, k, v, g))
    state = k[..., None] * v[..., None, :] if state is None else (
        state.to(acc) * g.exp()[..., None] + k[..., None] * v[..., None, :])
    return (scale * torch.einsum("bhk,bhkv->bhv", q, state)).to(dtype), state

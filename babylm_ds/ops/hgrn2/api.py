"""Public HGRN2 op: input checks, backend dispatch and the recurrent step for generation.

Every backend is a function fn(q, k, v, g, scale, initial_state, output_final_state) ->
(o, final_state_or_None), differentiable w.r.t. q, k, v, g and initial_state; it receives
validated contiguous inputs, a float scale and an fp32 state (float64 when the inputs are).
"""
import logging

import torch

from .chunk import acc_dtype, chunk_hgrn2

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch")
_warned = set()


def _load(name, q, v, auto):
    """(fn, "") for a backend available for these inputs, else (None, reason). Under auto the
    Triton kernels are also self-checked once per head layout."""
    device = q.device
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
        from babylm_ds.ops.hgrn2.triton import triton_hgrn2, triton_selfcheck, triton_status
    except ImportError as e:
        return None, f"triton cannot be imported ({e})"
    ok, reason = triton_status(device)
    if ok and auto:
        ok, reason = triton_selfcheck(device, q.dtype, q.shape[-2], q.shape[-1], v.shape[-1])
    return (triton_hgrn2, "") if ok else (None, reason)


def _backend(name, q, v):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name != "auto":
        fn, reason = _load(name, q, v, auto=False)
        if fn is None:
            raise RuntimeError(f"hgrn2 backend {name!r} unavailable: {reason}")
        return fn
    device = q.device
    chain = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
    reasons = []
    for cand in chain:
        fn, reason = _load(cand, q, v, auto=True)
        if fn is not None:
            if reasons and (device.type, cand) not in _warned:
                _warned.add((device.type, cand))
                logger.warning("hgrn2: using backend %r on %s (%s)", cand, device.type, "; ".join(reasons))
            return fn
        reasons.append(f"{cand!r} unavailable: {reason}")


def _check_tensor(name, x, ndim, layout):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check(q, k, v, g, state, step):
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
    if not step and q.shape[1] == 0:
        raise ValueError("q, k, v, g have an empty time dimension (T = 0)")
    lo, hi = torch.aminmax(g)  # one pass and one device sync; NaN fails both comparisons
    if not bool((lo > float("-inf")) & (hi <= 0)):
        raise ValueError("g must be finite and <= 0 (it is the log of the forget gate)")
    if state is not None:
        name = "state" if step else "initial_state"
        _check_tensor(name, state, 4, "[B, H, K, V]")
        B, H, K, V = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
        if state.shape != (B, H, K, V):
            raise ValueError(f"{name} shape {tuple(state.shape)} must be (B, H, K, V) = {(B, H, K, V)}")
        if state.device != q.device:
            raise ValueError(f"{name} is on {state.device} but q is on {q.device}")


def hgrn2(q, k, v, g, scale=None, initial_state=None, output_final_state=False, backend="auto"):
    """Chunked HGRN2: S_t = diag(exp g_t) S_{t-1} + k_t^T v_t ; o_t = scale q_t S_t.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; g <= 0; scale defaults to K^-0.5; initial_state
    [B, H, K, V]. Returns (o [B, T, H, V] in q's dtype, final state [B, H, K, V] fp32 or None).
    backend: "auto" (cuda ext -> triton -> torch on GPU, cpu ext -> torch on CPU), "cpu", "cuda",
    "triton" or "torch".
    """
    _check(q, k, v, g, initial_state, step=False)
    fn = _backend(backend, q, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if initial_state is not None:
        initial_state = initial_state.to(acc_dtype(q)).contiguous()
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    return fn(q, k, v, g, scale, initial_state, bool(output_final_state))


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

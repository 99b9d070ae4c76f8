"""HGRN2 Triton backend: fused chunked forward and backward kernels.

One program owns one (batch, head, V-block) and walks the sequence in chunks of BT = 16 steps,
keeping the fp32 state [K, BV] in registers (the same algorithm as chunk.py with C = SUB = 16):
the inter-chunk part uses q e^{b} and k e^{b_last - b} (factors <= 1) and the intra-chunk part the
pairwise e^{b_i - b_j}, so no factor ever exceeds 1. Backward = one forward pass that recomputes the
states for dq and one reverse pass carrying the state adjoint for dk, dv, dh0; dq and dk are
summed over V-blocks and dg (a reverse cumsum) is formed in PyTorch.

Fixed block sizes (no autotuning) keep the kernels runnable under TRITON_INTERPRET=1 on CPU.
"""
import functools
import os

import torch
import triton
import triton.language as tl

BT = 16


def triton_status(device):
    """(available, reason) for running the Triton kernels on `device`."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return device.type == "cpu", "TRITON_INTERPRET=1 runs on CPU tensors only"
    if device.type != "cuda":
        return False, f"Triton needs CUDA tensors, got {device.type} (or set TRITON_INTERPRET=1)"
    return True, ""


@triton.jit
def _chunk_load(q, k, g, v, i_b, i_h, i_t, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                o_v, BT: tl.constexpr, BK: tl.constexpr):
    """Chunk i_t: q, k, b (in-chunk cumsum of g), v [BT, BV] in fp32, plus row offsets and masks."""
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    t = i_t * BT + o_t
    m_t = t < T
    row = (i_b * T + t) * H + i_h
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    m_tv = m_t[:, None] & (o_v < V)[None, :]
    p_k = row[:, None] * K + o_k[None, :]
    b_q = tl.load(q + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_k = tl.load(k + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_b = tl.cumsum(tl.load(g + p_k, mask=m_tk, other=0.).to(tl.float32), axis=0)
    b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.).to(tl.float32)
    return b_q, b_k, b_b, b_v, p_k, row[:, None] * V + o_v[None, :], m_tk, m_tv


@triton.jit
def _pair_decay(b_b, BT: tl.constexpr):
    """[BT, BT, BK] e^{b_i - b_j} for j <= i, zero above the diagonal; and the last row of b."""
    o_t = tl.arange(0, BT)
    causal = o_t[:, None] >= o_t[None, :]
    b_e = tl.exp(tl.where(causal[:, :, None], b_b[:, None, :] - b_b[None, :, :], float("-inf")))
    b_last = tl.sum(tl.where((o_t == BT - 1)[:, None], b_b, 0.), axis=0)
    return b_e, b_last, causal


@triton.jit
def _state_step(b_h, b_last, b_x, b_y, PREC: tl.constexpr):
    """A [BK, BV] state (or state adjoint) across one chunk: diag(e^{b_last}) h + x^T y."""
    return b_h * tl.exp(b_last)[:, None] + tl.dot(tl.trans(b_x), b_y, input_precision=PREC)


@triton.jit
def _program_state(h, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, LOAD: tl.constexpr):
    """This program's V-block, batch, head and value offsets, the pointers and mask of its [BK, BV]
    state tile, and that tile in fp32: loaded from h when LOAD, else zeros."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    p_h = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
    m_h = (o_k < K)[:, None] & (o_v < V)[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if LOAD:
        b_h += tl.load(h + p_h, mask=m_h, other=0.).to(tl.float32)
    return i_v, i_bh // H, i_bh % H, o_v, p_h, m_h, b_h


@triton.jit
def _fwd_kernel(q, k, v, g, h0, o, ht, scale, T, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                USE_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_b, i_h, o_v, p_h, m_h, b_h = _program_state(h0, H, K, V, BK, BV, USE_H0)
    for i_t in range(0, tl.cdiv(T, BT)):
        b_q, b_k, b_b, b_v, p_k, p_v, m_tk, m_tv = _chunk_load(q, k, g, v, i_b, i_h, i_t, T, H, K, V,
                                                              o_v, BT, BK)
        b_e, b_last, causal = _pair_decay(b_b, BT)
        b_A = tl.sum(b_q[:, None, :] * b_k[None, :, :] * b_e, axis=2)
        b_o = tl.dot(b_q * tl.exp(b_b), b_h, input_precision=PREC)
        b_o += tl.dot(b_A, b_v, input_precision=PREC)
        tl.store(o + p_v, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)
        b_h = _state_step(b_h, b_last, b_k * tl.exp(b_last[None, :] - b_b), b_v, PREC)
    if STORE_HT:
        tl.store(ht + p_h, b_h.to(ht.dtype.element_ty), mask=m_h)


@triton.jit
def _bwd_dq_kernel(q, k, v, g, h0, do, dq, scale, T, H: tl.constexpr, K: tl.constexpr,
                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   USE_H0: tl.constexpr, PREC: tl.constexpr):
    """dq restricted to V-block i_v (summed over blocks by the caller), recomputing the states."""
    i_v, i_b, i_h, o_v, p_h, m_h, b_h = _program_state(h0, H, K, V, BK, BV, USE_H0)
    B = tl.num_programs(1) // H
    dq += i_v.to(tl.int64) * B * T * H * K
    for i_t in range(0, tl.cdiv(T, BT)):
        b_q, b_k, b_b, b_v, p_k, p_v, m_tk, m_tv = _chunk_load(q, k, g, v, i_b, i_h, i_t, T, H, K, V,
                                                              o_v, BT, BK)
        b_e, b_last, causal = _pair_decay(b_b, BT)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_dA = tl.where(causal, tl.dot(b_do, tl.trans(b_v), input_precision=PREC), 0.)
        b_dq = tl.dot(b_do, tl.trans(b_h), input_precision=PREC) * tl.exp(b_b)
        b_dq += tl.sum(b_dA[:, :, None] * b_k[None, :, :] * b_e, axis=1)
        tl.store(dq + p_k, b_dq * scale, mask=m_tk)
        b_h = _state_step(b_h, b_last, b_k * tl.exp(b_last[None, :] - b_b), b_v, PREC)


@triton.jit
def _bwd_dkv_kernel(q, k, v, g, do, dht, dk, dv, dh0, scale, T, H: tl.constexpr, K: tl.constexpr,
                    V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    """Reverse pass carrying the state adjoint: dk (per V-block), dv and dh0."""
    i_v, i_b, i_h, o_v, p_h, m_h, b_dh = _program_state(dht, H, K, V, BK, BV, USE_DHT)
    B = tl.num_programs(1) // H
    dk += i_v.to(tl.int64) * B * T * H * K
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        i_t = NT - 1 - i
        b_q, b_k, b_b, b_v, p_k, p_v, m_tk, m_tv = _chunk_load(q, k, g, v, i_b, i_h, i_t, T, H, K, V,
                                                              o_v, BT, BK)
        b_e, b_last, causal = _pair_decay(b_b, BT)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_A = tl.sum(b_q[:, None, :] * b_k[None, :, :] * b_e, axis=2)
        b_dA = tl.where(causal, tl.dot(b_do, tl.trans(b_v), input_precision=PREC), 0.)
        b_kdecay = tl.exp(b_last[None, :] - b_b)
        b_dk = tl.sum(b_dA[:, :, None] * b_q[:, None, :] * b_e, axis=0) * scale
        b_dk += tl.dot(b_v, tl.trans(b_dh), input_precision=PREC) * b_kdecay
        tl.store(dk + p_k, b_dk, mask=m_tk)
        b_dv = tl.dot(tl.trans(b_A), b_do, input_precision=PREC) * scale
        b_dv += tl.dot(b_k * b_kdecay, b_dh, input_precision=PREC)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_tv)
        b_dh = _state_step(b_dh, b_last, b_q * tl.exp(b_b) * scale, b_do, PREC)
    if STORE_DH0:
        tl.store(dh0 + p_h, b_dh.to(dh0.dtype.element_ty), mask=m_h)


def _config(q, v):
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK = max(16, triton.next_power_of_2(K))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    # 3-way split tf32 keeps fp32 I/O near fp32 accuracy on tensor cores ("ieee" spills registers)
    prec = "tf32x3" if q.dtype == torch.float32 else "tf32"
    meta = dict(T=T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=prec, num_warps=4 if BK < 64 else 8)
    return (triton.cdiv(V, BV), B * H), meta


class TritonHGRN2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        grid, meta = _config(q, v)
        B, _, H, K = q.shape
        o = torch.empty_like(v)
        ht = q.new_empty(B, H, K, v.shape[-1], dtype=torch.float32) if output_final_state else None
        _fwd_kernel[grid](q, k, v, g, initial_state, o, ht, scale, USE_H0=initial_state is not None,
                          STORE_HT=output_final_state, **meta)
        ctx.save_for_backward(q, k, v, g, initial_state, ht)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, ht = ctx.saved_tensors
        grid, meta = _config(q, v)
        do = do.contiguous()
        dq = q.new_empty(grid[0], *q.shape, dtype=torch.float32)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        dh0 = torch.empty_like(h0, dtype=torch.float32) if h0 is not None else None
        dht = dht.float().contiguous() if dht is not None else None
        _bwd_dq_kernel[grid](q, k, v, g, h0, do, dq, ctx.scale, USE_H0=h0 is not None, **meta)
        _bwd_dkv_kernel[grid](q, k, v, g, do, dht, dk, dv, dh0, ctx.scale, USE_DHT=dht is not None,
                              STORE_DH0=h0 is not None, **meta)
        dq, dk = dq.sum(0), dk.sum(0)
        dG = q.float() * dq - k.float() * dk
        if dht is not None:
            dG[:, -1] += (ht * dht).sum(-1)
        dg = dG.flip(1).cumsum(1).flip(1)
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype), None,
                None if h0 is None else dh0.to(h0.dtype), None)


def triton_hgrn2(q, k, v, g, scale, initial_state, output_final_state):
    """Backend entry: (o [B, T, H, V], final_state [B, H, K, V] fp32 or None)."""
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    return TritonHGRN2.apply(q, k, v, g, scale, initial_state, output_final_state)


@functools.lru_cache(maxsize=None)
def triton_selfcheck(device, dtype, H, K, V):
    """(ok, reason): run forward + backward once on a small input with this head layout (compiling
    the kernels) and compare with the torch backend; lets "auto" skip a broken Triton setup."""
    from babylm_ds.ops.hgrn2.chunk import chunk_hgrn2

    gen = torch.Generator().manual_seed(0)
    q, k, v, g = (torch.randn(1, 2 * BT + 3, H, D, generator=gen) for D in (K, K, V, K))
    q, k, v, g = (x.to(device, dtype) for x in (q, k, v, -g.abs()))
    outs = []
    try:
        with torch.enable_grad():
            for fn in (triton_hgrn2, chunk_hgrn2):
                ins = [x.clone().requires_grad_() for x in (q, k, v, g)]
                o, _ = fn(*ins, K ** -0.5, None, False)
                o.float().pow(2).sum().backward()
                outs.append([o] + [x.grad for x in ins])
    except Exception as e:  # compilation, resource or launch errors of this setup
        msg = (str(e).strip().splitlines() or [""])[0]
        return False, f"Triton self-check raised {type(e).__name__}: {msg}"
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    for name, a, b in zip(("o", "dq", "dk", "dv", "dg"), *outs):
        err = ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1)).item()
        if not err <= tol:
            return False, f"Triton self-check mismatch in {name} (relative error {err:.2g})"
    return True, ""

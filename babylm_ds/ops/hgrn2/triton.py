"""HGRN2 Triton backend: fla's chunk decomposition (state pass + chunk-parallel forward/backward).

Sequences are packed along time (fla's varlen layout; B equal-length sequences are offsets
0, T, ..., B T), cut into chunks of BT = 64 steps, and b = the cumsum of g from the chunk start
(fp32, non-increasing). Kernels:

    cumsum      b per chunk                                    grid (chunks, H)
    state       h[c] = state entering chunk c; the only loop   grid (K tiles, V tiles, N H)
                over chunks: h <- e^{b_last} h + (k e^{b_last - b})^T v
                (reversed: dh <- e^{b_last} dh + scale (q e^b)^T do, for the state adjoint)
    intra_A     A_ij = sum_k q_ik k_jk e^{b_ik - b_jk}, j <= i,  grid (chunks, sub-chunks, H)
                in 16 x 16 blocks: off-diagonal blocks (I > J) as a dot of q e^{b - b_r} and
                k e^{b_r - b} with r the first step of I, diagonal blocks pairwise
    fwd_o       o = scale ((q e^b) h[c] + A v)                 grid (V tiles, chunks, H)
    bwd_dv      dv = scale A^T do + (k e^{b_last - b}) dh[c]   grid (V tiles, chunks, H)
    bwd_inter   state terms of dq, dk; dA = scale do v^T; the  grid (K tiles, chunks, H)
                dg carry rowsum(S_end * dh[c]) = sum of dg over all later steps
    bwd_intra   A's terms of dq, dk from dA; dg = reverse      grid (K tiles, chunks, H)
                cumsum of q dq - k dk inside the chunk + carry

Every exponent is clamped to <= 0, so no factor exceeds 1 (exact with g = -20 per step) and masked
rows stay finite. b, the chunk states, A and dA live in fp32 workspaces; the backward recomputes
b, the states and A rather than saving them. Fixed block sizes (no autotuning) keep it runnable
under TRITON_INTERPRET=1. Grids wider than CUDA allows along y or z (65535: past 4.19M tokens of chunks
in one call, or N H > 65535) are folded into x (`_grid`, `_pids`); every launch runs on the inputs'
device, whichever is current.
"""
import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from .chunk import CHUNK, SUB

BT, BC = CHUNK, SUB  # chunk and sub-chunk lengths (one definition: ops/hgrn2/chunk.py)
MAX_GRID_YZ = 65535  # CUDA's limit on grid y and z (x: 2^31 - 1); a test lowers it to exercise the fold


def triton_status(device, dtype=None):
    """(available, reason) for running the Triton kernels on `device`."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return device.type == "cpu", "TRITON_INTERPRET=1 runs on CPU tensors only"
    if device.type != "cuda":
        return False, f"Triton needs CUDA tensors, got {device.type} (or set TRITON_INTERPRET=1)"
    if dtype == torch.float64:
        return False, "the Triton kernels take fp32/bf16/fp16 inputs, not float64"
    return True, ""


def _grid(gx, gy, gz):
    """Launch grid of the logical grid (gx, gy, gz): y and z capped at MAX_GRID_YZ, their folds moved to x."""
    fy, fz = triton.cdiv(gy, MAX_GRID_YZ), triton.cdiv(gz, MAX_GRID_YZ)
    return gx * fy * fz, min(gy, MAX_GRID_YZ), min(gz, MAX_GRID_YZ)


def _device(x):
    """Make x's device current for the launches in the block (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


@triton.jit
def _pids(GY, GZ):
    """Logical program ids (x, y, z) of a launch on _grid(gx, GY, GZ), and whether y and z are in range
    (the last fold of y or z may overhang)."""
    ny, nz = tl.num_programs(1), tl.num_programs(2)
    fy, fz = tl.cdiv(GY, ny), tl.cdiv(GZ, nz)
    gx = tl.num_programs(0) // (fy * fz)
    p = tl.program_id(0)
    r = p // gx
    i_y, i_z = (r % fy) * ny + tl.program_id(1), (r // fy) * nz + tl.program_id(2)
    return p % gx, i_y, i_z, (i_y < GY) & (i_z < GZ)


@triton.jit
def _chunk(cu, chunk_idx, i_t, BT: tl.constexpr):
    """Global chunk i_t -> (its sequence's end, its first row)."""
    i_n, i_c = tl.load(chunk_idx + 2 * i_t), tl.load(chunk_idx + 2 * i_t + 1)
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    return eos, bos + i_c * BT


@triton.jit
def _rows(x, t0, eos, i_h, i_d, H: tl.constexpr, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Load rows t0 .. t0+BR of head i_h, columns tile i_d of x [T, H, D] as fp32 (zeros outside)."""
    t = t0 + tl.arange(0, BR)
    o_d = i_d * BD + tl.arange(0, BD)
    m = (t < eos)[:, None] & (o_d < D)[None, :]
    return tl.load(x + (t * H + i_h)[:, None] * D + o_d[None, :], mask=m, other=0.).to(tl.float32)


@triton.jit
def _store_rows(x, val, t0, eos, i_h, i_d, H: tl.constexpr, D: tl.constexpr, BR: tl.constexpr,
                BD: tl.constexpr):
    t = t0 + tl.arange(0, BR)
    o_d = i_d * BD + tl.arange(0, BD)
    m = (t < eos)[:, None] & (o_d < D)[None, :]
    tl.store(x + (t * H + i_h)[:, None] * D + o_d[None, :], val.to(x.dtype.element_ty), mask=m)


@triton.jit
def _row(x, t, eos, i_h, i_d, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    """One row [BD] of x (zeros when t >= eos)."""
    o_d = i_d * BD + tl.arange(0, BD)
    return tl.load(x + (t * H + i_h) * D + o_d, mask=(o_d < D) & (t < eos), other=0.).to(tl.float32)


@triton.jit
def _tile_ptr(h, i_t, i_h, i_k, i_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
              BK: tl.constexpr, BV: tl.constexpr):
    """Pointers and mask of the [BK, BV] tile of state h[i_t, i_h] ([*, H, K, V])."""
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    p = h + ((i_t * H + i_h) * K + o_k[:, None]).to(tl.int64) * V + o_v[None, :]
    return p, (o_k < K)[:, None] & (o_v < V)[None, :]


@triton.jit
def _cumsum_kernel(g, gc, cu, chunk_idx, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    eos, t0 = _chunk(cu, chunk_idx, i_t, BT)
    for i_k in range(tl.cdiv(K, BK)):
        b = tl.cumsum(_rows(g, t0, eos, i_h, i_k, H, K, BT, BK), axis=0)
        _store_rows(gc, b, t0, eos, i_h, i_k, H, K, BT, BK)


@triton.jit
def _state_kernel(x, y, gc, h0, hs, ht, cu, chunk_off, scale, N, H: tl.constexpr, K: tl.constexpr,
                  V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  REVERSE: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  DT: tl.constexpr, PREC: tl.constexpr):
    """Forward (x = k, y = v): hs[c] = state entering chunk c, ht = final state. REVERSE (x = q,
    y = do, h0 = dht): hs[c] = adjoint of the state leaving chunk c, ht = adjoint of h0."""
    i_k, i_v, i_nh, ok = _pids(tl.cdiv(V, BV), N * H)
    if not ok:
        return
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n).to(tl.int64), tl.load(cu + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_off + i_n).to(tl.int64)
    NT = tl.cdiv(eos - bos, BT)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        p_s, m_s = _tile_ptr(h0, i_n, i_h, i_k, i_v, H, K, V, BK, BV)
        b_h += tl.load(p_s, mask=m_s, other=0.)
    for i in range(NT):
        i_t = NT - 1 - i if REVERSE else i
        p_h, m_h = _tile_ptr(hs, c0 + i_t, i_h, i_k, i_v, H, K, V, BK, BV)
        tl.store(p_h, b_h, mask=m_h)
        t0 = bos + i_t * BT
        b_x = _rows(x, t0, eos, i_h, i_k, H, K, BT, BK)
        b_b = _rows(gc, t0, eos, i_h, i_k, H, K, BT, BK)
        b_last = _row(gc, tl.minimum(t0 + BT, eos) - 1, eos, i_h, i_k, H, K, BK)
        if REVERSE:
            b_x = b_x * tl.exp(tl.minimum(b_b, 0.)) * scale
        else:
            b_x = b_x * tl.exp(tl.minimum(b_last[None, :] - b_b, 0.))
        b_y = _rows(y, t0, eos, i_h, i_v, H, V, BT, BV)
        b_h = b_h * tl.exp(b_last)[:, None] + tl.dot(tl.trans(b_x).to(DT), b_y.to(DT), input_precision=PREC)
    if STORE_HT:
        p_s, m_s = _tile_ptr(ht, i_n, i_h, i_k, i_v, H, K, V, BK, BV)
        tl.store(p_s, b_h, mask=m_s)


@triton.jit
def _intra_A_kernel(q, k, gc, A, cu, chunk_idx, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                    BC: tl.constexpr, BK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """Row block I (program 1) of A [T, H, BT] for chunk i_t: blocks J < I by dot with reference
    point r = first row of I, the diagonal block column by column; blocks J > I are not written."""
    i_t, i_i, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    eos, t0 = _chunk(cu, chunk_idx, i_t, BT)
    r0 = t0 + i_i * BC
    o_c = tl.arange(0, BC)
    if r0 < eos:  # blocks above the diagonal are never read (loads mask them)
        for J in tl.static_range(BT // BC):
            b_A = tl.zeros([BC, BC], dtype=tl.float32)
            if J < i_i:
                for i_k in range(tl.cdiv(K, BK)):
                    b_bi = _rows(gc, r0, eos, i_h, i_k, H, K, BC, BK)
                    b_r = _row(gc, r0, eos, i_h, i_k, H, K, BK)
                    b_bj = _rows(gc, t0 + J * BC, eos, i_h, i_k, H, K, BC, BK)
                    b_qg = _rows(q, r0, eos, i_h, i_k, H, K, BC, BK) * tl.exp(
                        tl.minimum(b_bi - b_r[None, :], 0.))
                    b_kg = _rows(k, t0 + J * BC, eos, i_h, i_k, H, K, BC, BK) * tl.exp(
                        tl.minimum(b_r[None, :] - b_bj, 0.))
                    b_A += tl.dot(b_qg.to(DT), tl.trans(b_kg).to(DT), input_precision=PREC)
            if J == i_i:
                for i_k in range(tl.cdiv(K, BK)):
                    o_k = i_k * BK + tl.arange(0, BK)
                    b_q = _rows(q, r0, eos, i_h, i_k, H, K, BC, BK)
                    b_bi = _rows(gc, r0, eos, i_h, i_k, H, K, BC, BK)
                    p_j = (r0 * H + i_h) * K + o_k
                    for j in range(tl.minimum(BC, eos - r0)):  # column j, pairwise e^{b_i - b_j}
                        b_kj = tl.load(k + p_j + j * H * K, mask=o_k < K, other=0.).to(tl.float32)
                        b_bj = tl.load(gc + p_j + j * H * K, mask=o_k < K, other=0.)
                        col = tl.sum(b_q * b_kj[None, :] * tl.exp(tl.minimum(b_bi - b_bj[None, :], 0.)), 1)
                        b_A += tl.where((o_c[:, None] >= j) & (o_c[None, :] == j), col[:, None], 0.)
            if J <= i_i:
                _store_rows(A + J * BC, b_A, r0, eos, i_h, 0, H, BT, BC, BC)


@triton.jit
def _fwd_o_kernel(q, v, gc, hs, A, o, cu, chunk_idx, scale, NT, H: tl.constexpr, K: tl.constexpr,
                  V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  DT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_t, i_h, ok = _pids(NT, H)
    if not ok:
        return
    eos, t0 = _chunk(cu, chunk_idx, i_t, BT)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_qe = _rows(q, t0, eos, i_h, i_k, H, K, BT, BK) * tl.exp(
            tl.minimum(_rows(gc, t0, eos, i_h, i_k, H, K, BT, BK), 0.))
        p_h, m_h = _tile_ptr(hs, i_t, i_h, i_k, i_v, H, K, V, BK, BV)
        b_o += tl.dot(b_qe.to(DT), tl.load(p_h, mask=m_h, other=0.).to(DT), input_precision=PREC)
    o_t = tl.arange(0, BT)
    b_A = tl.where(o_t[:, None] >= o_t[None, :], _rows(A, t0, eos, i_h, 0, H, BT, BT, BT), 0.)
    b_o += tl.dot(b_A.to(DT), _rows(v, t0, eos, i_h, i_v, H, V, BT, BV).to(DT), input_precision=PREC)
    _store_rows(o, b_o * scale, t0, eos, i_h, i_v, H, V, BT, BV)


@triton.jit
def _bwd_dv_kernel(k, gc, A, do, dhs, dv, cu, chunk_idx, scale, NT, H: tl.constexpr, K: tl.constexpr,
                   V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   DT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_t, i_h, ok = _pids(NT, H)
    if not ok:
        return
    eos, t0 = _chunk(cu, chunk_idx, i_t, BT)
    o_t = tl.arange(0, BT)
    b_A = tl.where(o_t[:, None] >= o_t[None, :], _rows(A, t0, eos, i_h, 0, H, BT, BT, BT), 0.)
    b_do = _rows(do, t0, eos, i_h, i_v, H, V, BT, BV)
    b_dv = tl.dot(tl.trans(b_A).to(DT), b_do.to(DT), input_precision=PREC) * scale
    for i_k in range(tl.cdiv(K, BK)):
        b_last = _row(gc, tl.minimum(t0 + BT, eos) - 1, eos, i_h, i_k, H, K, BK)
        b_ke = _rows(k, t0, eos, i_h, i_k, H, K, BT, BK) * tl.exp(
            tl.minimum(b_last[None, :] - _rows(gc, t0, eos, i_h, i_k, H, K, BT, BK), 0.))
        p_h, m_h = _tile_ptr(dhs, i_t, i_h, i_k, i_v, H, K, V, BK, BV)
        b_dv += tl.dot(b_ke.to(DT), tl.load(p_h, mask=m_h, other=0.).to(DT), input_precision=PREC)
    _store_rows(dv, b_dv, t0, eos, i_h, i_v, H, V, BT, BV)


@triton.jit
def _bwd_inter_kernel(q, k, v, gc, hs, do, dhs, dq, dk, dgk, dA, cu, chunk_idx, scale, NT, H: tl.constexpr,
                      K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """State terms of dq, dk (fp32 buffers), the dg carry of the chunk dgk [chunks, H, K] and, from
    the first K tile, dA = scale do v^T on the causal half."""
    i_k, i_t, i_h, ok = _pids(NT, H)
    if not ok:
        return
    eos, t0 = _chunk(cu, chunk_idx, i_t, BT)
    b_b = _rows(gc, t0, eos, i_h, i_k, H, K, BT, BK)
    b_last = _row(gc, tl.minimum(t0 + BT, eos) - 1, eos, i_h, i_k, H, K, BK)
    b_kd = tl.exp(tl.minimum(b_last[None, :] - b_b, 0.))
    b_ke = _rows(k, t0, eos, i_h, i_k, H, K, BT, BK) * b_kd
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dgk = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        p_h, m_h = _tile_ptr(hs, i_t, i_h, i_k, i_v, H, K, V, BK, BV)
        b_h = tl.load(p_h, mask=m_h, other=0.)
        p_h, m_h = _tile_ptr(dhs, i_t, i_h, i_k, i_v, H, K, V, BK, BV)
        b_dh = tl.load(p_h, mask=m_h, other=0.)
        b_do = _rows(do, t0, eos, i_h, i_v, H, V, BT, BV)
        b_v = _rows(v, t0, eos, i_h, i_v, H, V, BT, BV)
        b_dq += tl.dot(b_do.to(DT), tl.trans(b_h).to(DT), input_precision=PREC)
        b_dk += tl.dot(b_v.to(DT), tl.trans(b_dh).to(DT), input_precision=PREC)
        b_dA += tl.dot(b_do.to(DT), tl.trans(b_v).to(DT), input_precision=PREC)
        b_end = b_h * tl.exp(b_last)[:, None] + tl.dot(tl.trans(b_ke).to(DT), b_v.to(DT),
                                                        input_precision=PREC)
        b_dgk += tl.sum(b_end * b_dh, 1)
    b_dq *= tl.exp(tl.minimum(b_b, 0.)) * scale
    _store_rows(dq, b_dq, t0, eos, i_h, i_k, H, K, BT, BK)
    _store_rows(dk, b_dk * b_kd, t0, eos, i_h, i_k, H, K, BT, BK)
    o_k = i_k * BK + tl.arange(0, BK)
    tl.store(dgk + (i_t * H + i_h).to(tl.int64) * K + o_k, b_dgk, mask=o_k < K)
    if i_k == 0:
        o_t = tl.arange(0, BT)
        b_dA = tl.where(o_t[:, None] >= o_t[None, :], b_dA * scale, 0.)
        _store_rows(dA, b_dA, t0, eos, i_h, 0, H, BT, BT, BT)


@triton.jit
def _bwd_intra_kernel(q, k, gc, dA, dq, dk, dgk, dq_out, dk_out, dg, cu, chunk_idx, NT,
                      H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                      BK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """dq, dk = state terms (dq, dk) + A's terms from dA; dg: reverse cumsum of q dq - k dk inside
    the chunk, sub-chunk by sub-chunk from the last, starting from the carry dgk."""
    i_k, i_t, i_h, ok = _pids(NT, H)
    if not ok:
        return
    eos, t0 = _chunk(cu, chunk_idx, i_t, BT)
    o_c = tl.arange(0, BC)
    o_k = i_k * BK + tl.arange(0, BK)
    b_carry = tl.load(dgk + (i_t * H + i_h).to(tl.int64) * K + o_k, mask=o_k < K, other=0.)
    for ii in tl.static_range(BT // BC):
        I = BT // BC - 1 - ii
        r0 = t0 + I * BC
        if r0 < eos:
            b_q = _rows(q, r0, eos, i_h, i_k, H, K, BC, BK)
            b_k = _rows(k, r0, eos, i_h, i_k, H, K, BC, BK)
            b_b = _rows(gc, r0, eos, i_h, i_k, H, K, BC, BK)
            b_r = _row(gc, r0, eos, i_h, i_k, H, K, BK)
            b_dq = tl.zeros([BC, BK], dtype=tl.float32)
            b_dk = tl.zeros([BC, BK], dtype=tl.float32)
            for J in tl.static_range(BT // BC):
                rj = t0 + J * BC
                if J < I:  # dq_I += dA_IJ (k_J e^{b_r - b_J}), times e^{b_I - b_r} below
                    b_kg = _rows(k, rj, eos, i_h, i_k, H, K, BC, BK) * tl.exp(
                        tl.minimum(b_r[None, :] - _rows(gc, rj, eos, i_h, i_k, H, K, BC, BK), 0.))
                    b_dAij = _rows(dA + J * BC, r0, eos, i_h, 0, H, BT, BC, BC)
                    b_dq += tl.dot(b_dAij.to(DT), b_kg.to(DT), input_precision=PREC)
                if J > I:  # dk_I += dA_JI^T (q_J e^{b_J - b_rJ}) e^{b_rJ - b_I}
                    if rj < eos:
                        b_rj = _row(gc, rj, eos, i_h, i_k, H, K, BK)
                        b_qg = _rows(q, rj, eos, i_h, i_k, H, K, BC, BK) * tl.exp(
                            tl.minimum(_rows(gc, rj, eos, i_h, i_k, H, K, BC, BK) - b_rj[None, :], 0.))
                        b_dAt = tl.trans(_rows(dA + I * BC, rj, eos, i_h, 0, H, BT, BC, BC))
                        b_dk += tl.dot(b_dAt.to(DT), b_qg.to(DT), input_precision=PREC) * tl.exp(
                            tl.minimum(b_rj[None, :] - b_b, 0.))
            b_dq *= tl.exp(tl.minimum(b_b - b_r[None, :], 0.))
            p_j = (r0 * H + i_h) * K + o_k
            p_dA = dA + ((r0 + o_c) * H + i_h) * BT + I * BC
            for j in range(tl.minimum(BC, eos - r0)):  # diagonal block, pairwise: column j of dA_II
                b_dAj = tl.load(p_dA + j, mask=r0 + o_c < eos, other=0.)
                b_bj = tl.load(gc + p_j + j * H * K, mask=o_k < K, other=0.)
                b_kj = tl.load(k + p_j + j * H * K, mask=o_k < K, other=0.).to(tl.float32)
                b_e = tl.where((o_c >= j)[:, None], tl.exp(tl.minimum(b_b - b_bj[None, :], 0.)), 0.)
                b_dq += b_dAj[:, None] * b_kj[None, :] * b_e
                b_dkj = tl.sum(b_dAj[:, None] * b_q * b_e, 0)
                b_dk += tl.where((o_c == j)[:, None], b_dkj[None, :], 0.)
            b_dq += _rows(dq, r0, eos, i_h, i_k, H, K, BC, BK)
            b_dk += _rows(dk, r0, eos, i_h, i_k, H, K, BC, BK)
            b_dG = b_q * b_dq - b_k * b_dk
            b_dg = b_carry[None, :] + tl.cumsum(b_dG, axis=0, reverse=True)
            b_carry += tl.sum(b_dG, 0)
            _store_rows(dq_out, b_dq, r0, eos, i_h, i_k, H, K, BC, BK)
            _store_rows(dk_out, b_dk, r0, eos, i_h, i_k, H, K, BC, BK)
            _store_rows(dg, b_dg, r0, eos, i_h, i_k, H, K, BC, BK)


@functools.lru_cache(maxsize=64)
def _equal_tables(B, T, device):
    return _tables(torch.arange(0, (B + 1) * T, T), device)


def _tables(offsets, device):
    """(cu [N+1], chunk_idx [chunks, 2] = (sequence, chunk in it), chunk_off [N+1]) as int32 on
    device, and the chunk count; from the offsets on the host (a sync only if they are on a GPU)."""
    offsets = offsets.cpu().long()
    n = (offsets[1:] - offsets[:-1] + BT - 1) // BT
    chunk_off = torch.nn.functional.pad(n.cumsum(0), (1, 0))
    seq = torch.repeat_interleave(torch.arange(len(n)), n)
    idx = torch.stack([seq, torch.arange(len(seq)) - chunk_off[seq]], 1)
    tabs = [x.to(device, torch.int32, non_blocking=True) for x in (offsets, idx, chunk_off)]
    return tabs, len(seq)


def _config(q, v):
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK = min(64, max(16, triton.next_power_of_2(K)))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    # dot operands (fp32 accumulation): bf16 for bf16 inputs, as fla; else fp32 on tensor cores as
    # 3-way split tf32, near fp32 accuracy (fp16 would overflow on large states), and under the
    # interpreter, whose bf16 dot is wrong. 8 warps hold the 64 x 64 fp32 tiles without register
    # spills (4 warps spill at K = V = 128, per cuobjdump on sm_90)
    bf16 = q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") != "1"
    dt, prec = (tl.bfloat16, "tf32") if bf16 else (tl.float32, "tf32x3")
    return dict(H=H, K=K, BT=BT, BK=BK, DT=dt, PREC=prec, num_warps=8), dict(V=V, BV=BV)


def _forward_states(q, k, v, g, h0, tabs, NT, need_ht):
    """gc, per-chunk states hs, final state ht (or None) and A."""
    (cu, idx, off), (kw, vw) = tabs, _config(q, v)
    H, K, V, BK, BV = kw["H"], kw["K"], vw["V"], kw["BK"], vw["BV"]
    N = len(cu) - 1
    gc = torch.empty_like(g, dtype=torch.float32)
    _cumsum_kernel[(NT, H)](g, gc, cu, idx, H=H, K=K, BT=BT, BK=BK)
    hs = q.new_empty(NT, H, K, V, dtype=torch.float32)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if need_ht else None
    _state_kernel[_grid(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
        k, v, gc, h0, hs, ht, cu, off, 1.0, N, REVERSE=False, USE_H0=h0 is not None, STORE_HT=need_ht,
        **kw, **vw)
    A = q.new_empty(*q.shape[:3], BT, dtype=torch.float32)
    _intra_A_kernel[(NT, BT // BC, H)](q, k, gc, A, cu, idx, BC=BC, **kw)
    return gc, hs, ht, A


class TritonHGRN2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens):
        B, T = q.shape[:2]
        tabs, NT = _equal_tables(B, T, q.device) if cu_seqlens is None else _tables(cu_seqlens, q.device)
        kw, vw = _config(q, v)
        with _device(q):
            gc, hs, ht, A = _forward_states(q, k, v, g, initial_state, tabs, NT, output_final_state)
            o = torch.empty_like(v)
            _fwd_o_kernel[_grid(triton.cdiv(vw["V"], vw["BV"]), NT, kw["H"])](
                q, v, gc, hs, A, o, tabs[0], tabs[1], scale, NT, **kw, **vw)
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale, ctx.tabs, ctx.NT = scale, tabs, NT
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        (cu, idx, off), NT, scale = ctx.tabs, ctx.NT, ctx.scale
        kw, vw = _config(q, v)
        H, K, V, BK, BV = kw["H"], kw["K"], vw["V"], kw["BK"], vw["BV"]
        N, NK, NV = len(cu) - 1, triton.cdiv(K, BK), triton.cdiv(V, BV)
        do = do.contiguous()
        dh0 = torch.empty_like(h0, dtype=torch.float32) if h0 is not None else None
        dht = dht.float().contiguous() if dht is not None else None
        with _device(q):
            gc, hs, _, A = _forward_states(q, k, v, g, h0, ctx.tabs, NT, False)
            dhs = torch.empty_like(hs)
            _state_kernel[_grid(NK, NV, N * H)](q, do, gc, dht, dhs, dh0, cu, off, scale, N, REVERSE=True,
                                                USE_H0=dht is not None, STORE_HT=h0 is not None, **kw, **vw)
            dv = torch.empty_like(v)
            _bwd_dv_kernel[_grid(NV, NT, H)](k, gc, A, do, dhs, dv, cu, idx, scale, NT, **kw, **vw)
            dq_s, dk_s = (torch.empty_like(gc) for _ in range(2))
            dgk = q.new_empty(NT, H, K, dtype=torch.float32)
            dA = torch.empty_like(A)
            _bwd_inter_kernel[_grid(NK, NT, H)](q, k, v, gc, hs, do, dhs, dq_s, dk_s, dgk, dA, cu, idx, scale, NT,
                                                **kw, **vw)
            dq, dk, dg = torch.empty_like(q), torch.empty_like(k), torch.empty_like(g)
            _bwd_intra_kernel[_grid(NK, NT, H)](q, k, gc, dA, dq_s, dk_s, dgk, dq, dk, dg, cu, idx, NT, BC=BC, **kw)
        return dq, dk, dv, dg, None, dh0, None, None


def triton_hgrn2(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens=None):
    """Backend entry: (o [B, T, H, V], final_state [N, H, K, V] fp32 or None); cu_seqlens as in
    hgrn2(), preferably on the CPU (the chunk tables are built on the host)."""
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    return TritonHGRN2.apply(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)

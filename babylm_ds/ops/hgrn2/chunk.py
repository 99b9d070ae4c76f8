"""Chunked HGRN2 in pure PyTorch: the portable backend and the readable spec of the algorithm.

Per chunk of C = CHUNK steps, with b = cumsum of g from the chunk start (b <= 0, non-increasing) and S the
fp32 state entering the chunk:

    inter: o_i += scale (q_i * e^{b_i}) S ;  S <- e^{b_C} * S + sum_j (k_j * e^{b_C - b_j})^T v_j
    intra: o_i += scale sum_{j<=i} P_ij v_j  with  P_ij = sum_k q_ik k_jk e^{b_ik - b_jk}

No exponential factor ever exceeds 1. P is built from sub-chunks of SUB steps: an off-diagonal block
(query sub-chunk I > key sub-chunk J) splits e^{b_i - b_j} at the first step r of I into
e^{b_i - b_r} * e^{b_r - b_j}; a diagonal block uses the pairwise e^{b_i - b_j} directly. The
intra-chunk part is vectorised over chunks; only the state pass loops over chunks.

Backward (G = global cumulative log decay, dS_t = adjoint of the state after step t):
    dq_t = scale S_t do_t,   dk_t = dS_t v_t,   dv_t = dS_t^T k_t,
    dG_t = q_t*dq_t - k_t*dk_t (+ rowsum(S_T * dS_T) at t = T),   dg = reverse cumsum of dG.
Chunk states are recomputed rather than saved.

Inlined into exported models (models/remote_code.py): keeps the rules in models/export_rules.py.
"""
import torch
import torch.nn.functional as F

CHUNK, SUB = 64, 16  # chunk length C and sub-chunk length; the C++/CUDA kernels': csrc/hgrn2_common.h
NS = CHUNK // SUB


def acc_dtype(x):
    """Accumulation (and state) dtype for inputs like x: float64 stays, everything else is float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _chunks(x, N):
    """[B, T, H, D] -> [B, H, N, C, D] in the accumulation dtype, zero-padded to N * C steps."""
    B, T, H, D = x.shape
    x = F.pad(x.to(acc_dtype(x)), (0, 0, 0, 0, 0, N * CHUNK - T))
    return x.transpose(1, 2).reshape(B, H, N, CHUNK, D)


def _unchunk(x, T):
    """[B, H, N, C, D] -> [B, T, H, D]."""
    B, H, N, _, D = x.shape
    return x.reshape(B, H, N * CHUNK, D)[:, :, :T].transpose(1, 2)


class _Intra:
    """Decay factors of one chunked sequence; builds P and its gradients sub-chunk by sub-chunk."""

    def __init__(self, gc):
        B, H, N, _, K = gc.shape
        self.shape = (B, H, N, NS, SUB, K)
        gs = gc.view(self.shape)
        ref = gs[..., :1, :]  # [.., I, 1, K]: b at the first step of each sub-chunk
        self.qfac = (gs - ref).exp()  # [.., I, a, K] e^{b_a - b_r(I)}
        off = torch.ones(NS, NS, dtype=torch.bool, device=gc.device).tril(-1)
        self.off, self.idx = off, torch.arange(NS, device=gc.device)
        # [.., I, J, c, K] e^{b_r(I) - b_c(J)} for J < I, zero elsewhere
        self.kfac = (ref[..., :, None, :, :] - gs[..., None, :, :, :]).masked_fill(
            ~off[:, :, None, None], float("-inf")).exp()
        tri = torch.ones(SUB, SUB, dtype=torch.bool, device=gc.device).tril()
        # [.., I, a, c, K] e^{b_a - b_c} for c <= a in the same sub-chunk, zero elsewhere
        self.diag = (gs[..., :, None, :] - gs[..., None, :, :]).masked_fill(
            ~tri[:, :, None], float("-inf")).exp()

    def P(self, q, k):
        qs, ks = q.view(self.shape), k.view(self.shape)
        P = torch.einsum("...iak,...ijck->...ijac", qs * self.qfac, self.kfac * ks[..., None, :, :, :])
        P[..., self.idx, self.idx, :, :] = (qs[..., :, None, :] * ks[..., None, :, :] * self.diag).sum(-1)
        return P.transpose(-3, -2).reshape(*self.shape[:3], CHUNK, CHUNK)

    def grads(self, q, k, dP):
        """dq, dk of sum(dP * P) for a lower-triangular dP [.., C, C]."""
        qs, ks = q.view(self.shape), k.view(self.shape)
        dP = dP.view(*self.shape[:3], NS, SUB, NS, SUB).transpose(-3, -2)  # [.., I, J, a, c]
        dd = dP[..., self.idx, self.idx, :, :, None] * self.diag  # [.., I, a, c, K]
        dP = dP * self.off[:, :, None, None]
        dq = torch.einsum("...ijac,...ijck->...iak", dP, self.kfac * ks[..., None, :, :, :]) * self.qfac
        dq = dq + (dd * ks[..., None, :, :]).sum(-2)
        dk = (torch.einsum("...ijac,...iak->...ijck", dP, qs * self.qfac) * self.kfac).sum(-4)
        dk = dk + (dd * qs[..., :, None, :]).sum(-3)
        return dq.reshape(*self.shape[:3], CHUNK, -1), dk.reshape(*self.shape[:3], CHUNK, -1)


def _scan(x, decay, S, reverse=False):
    """Sequential pass over chunks: out[n] = S, then S <- decay[n] * S + x[n]; x [B, H, N, K, V]."""
    out = torch.empty_like(x)
    for n in reversed(range(x.shape[2])) if reverse else range(x.shape[2]):
        out[:, :, n] = S
        S = torch.addcmul(x[:, :, n], decay[:, :, n, :, None], S)
    return out, S


def _zero_state(k, v, h0):
    return k.new_zeros(*k.shape[:2], k.shape[-1], v.shape[-1]) if h0 is None else h0.to(k.dtype)


def _prepare(q, k, v, g):
    N = -(-q.shape[1] // CHUNK)
    q, k, v, g = (_chunks(x, N) for x in (q, k, v, g))
    gc = g.cumsum(-2)
    gl = gc[..., -1, :]  # [B, H, N, K] log decay of the whole chunk
    eb, ed = gc.exp(), (gl[..., None, :] - gc).exp()  # decay from the chunk start / to the chunk end
    return q, k, v, gc, gl, eb, ed


class ChunkHGRN2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        T = q.shape[1]
        qc, kc, vc, gc, gl, eb, ed = _prepare(q, k, v, g)
        ke = kc * ed
        h, S = _scan(ke.transpose(-1, -2) @ vc, gl.exp(), _zero_state(ke, vc, initial_state))
        intra = _Intra(gc)
        o = scale * ((qc * eb) @ h + intra.P(qc, kc) @ vc)
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale = scale
        return _unchunk(o, T).to(q.dtype), (S if output_final_state else None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        scale, T = ctx.scale, q.shape[1]
        qc, kc, vc, gc, gl, eb, ed = _prepare(q, k, v, g)
        ke, decay = kc * ed, gl.exp()
        h, S = _scan(ke.transpose(-1, -2) @ vc, decay, _zero_state(ke, vc, h0))
        doc = _chunks(do, qc.shape[2])
        intra = _Intra(gc)
        P = intra.P(qc, kc)
        dP = scale * (doc @ vc.transpose(-1, -2)).tril()
        dq, dk = intra.grads(qc, kc, dP)
        dq = dq + scale * (doc @ h.transpose(-1, -2)) * eb
        # dh[:, :, n]: gradient w.r.t. the state leaving chunk n; dS ends as the gradient of h0
        dS = torch.zeros_like(S) if dht is None else dht.to(S.dtype)
        dh, dS = _scan(scale * (qc * eb).transpose(-1, -2) @ doc, decay, dS, reverse=True)
        dk = dk + (vc @ dh.transpose(-1, -2)) * ed
        dv = scale * P.transpose(-1, -2) @ doc + ke @ dh
        dG = _unchunk(qc * dq - kc * dk, T)  # a view of a fresh tensor: safe to update in place
        if dht is not None:
            dG[:, -1] += (S * dht).sum(-1)
        dg = dG.flip(1).cumsum(1).flip(1)
        dq, dk, dv = (_unchunk(x, T) for x in (dq, dk, dv))
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.to(g.dtype), None,
                None if h0 is None else dS.to(h0.dtype), None)


def chunk_hgrn2(q, k, v, g, scale, initial_state, output_final_state):
    """Backend entry: (o [B, T, H, V], final_state [B, H, K, V] or None)."""
    return ChunkHGRN2.apply(q, k, v, g, scale, initial_state, output_final_state)

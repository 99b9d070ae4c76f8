"""The compiled HGRN2 kernels (babylm_ds._C) against the float64 per-step oracle."""
import pytest
import torch

from babylm_ds.ops import hgrn2, naive_hgrn2
from babylm_ds.ops.hgrn2.ext import _C, ext_status, hgrn2_ext

ok, reason = ext_status()
pytestmark = pytest.mark.skipif(not ok, reason=reason)


@pytest.fixture(params=_C.cpu_isas() if ok else [])
def cpu_isa(request):
    """Runs the test once per instruction set of the CPU kernels that this CPU runs (see
    BABYLM_DS_CPU_ISA), each forced in turn."""
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa("")  # back to BABYLM_DS_CPU_ISA's or the best


def make(B, T, H, K, V, gmin, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v, do = (torch.randn(B, T, H, V, generator=gen, dtype=torch.float64) for _ in range(2))
    g = gmin * torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)
    h0, dht = (torch.randn(B, H, K, V, generator=gen, dtype=torch.float64) for _ in range(2))
    return [x.to(device, dtype) for x in (q, k, v, g)] + [x.to(device) for x in (h0, do, dht)]


def at_offset(x, off):
    """x's values stored `off` elements into a fresh buffer (a storage offset, as a slice of a larger tensor)."""
    buf = torch.empty(off + x.numel(), dtype=x.dtype, device=x.device)
    return buf[off:].view_as(x).copy_(x)


def fp16_range_inputs(device="cpu"):
    """Inputs (fp16; scale 1) for which head 0's state and head 1's state gradient pass 65504, fp16's
    largest, over 640 weakly decaying steps, while o, dq, dk, dv stay in fp16's range."""
    q, k, v, g, h0, do, dht = make(1, 640, 2, 16, 16, -1e-4, torch.float64, seed=2)
    big, small = (lambda x: 12 + x), (lambda x: 1e-3 * x)
    for h, (fq, fk) in enumerate([(small, big), (big, small)]):  # head 0: k, v large; head 1: q, do large
        for x, f in ((q, fq), (do, fq), (k, fk), (v, fk)):
            x[:, :, h] = f(x[:, :, h])
    return [x.to(device, torch.float16) for x in (q, k, v, g)] + [x.to(device, torch.float32) for x in
                                                                   (0 * h0, do.half(), 0 * dht)]


def grads(fn, q, k, v, g, h0, do, dht, scale):
    """(o, ht, dq, dk, dv, dg, dh0) of sum(o*do) + sum(ht*dht); the inputs are used in place (storage
    offsets stay), through aliases that take the gradients."""
    ins = [x.detach().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = fn(*ins[:4], scale, ins[4], True)
    loss = (o.double() * do.double()).sum() + (ht.double() * dht.double()).sum()
    return [o, ht, *torch.autograd.grad(loss, ins)]


def reference(*args):
    args = [x.detach().cpu().double() for x in args[:7]] + [args[7]]
    return grads(naive_hgrn2, *args)


def varlen_reference(q, k, v, g, h0, do, dht, cu, scale):
    """(o, ht, dq, dk, dv, dg, dh0) of packed sequences (cu_seqlens offsets, per-sequence states [N, H,
    K, V]) by the oracle run sequence by sequence (an empty sequence passes its state through)."""
    ins = [x.detach().cpu().double().requires_grad_() for x in (q, k, v, g, h0)]
    do, dht = do.detach().cpu().double(), dht.detach().cpu().double()
    outs, hts = [], []
    for s in range(len(cu) - 1):
        lo, hi = int(cu[s]), int(cu[s + 1])
        if hi > lo:
            o_s, ht_s = naive_hgrn2(*(x[:, lo:hi] for x in ins[:4]), scale, ins[4][s:s + 1], True)
            outs.append(o_s)
            hts.append(ht_s[0])
        else:
            hts.append(ins[4][s])
    o, ht = torch.cat(outs, 1), torch.stack(hts)
    return [o, ht, *torch.autograd.grad((o * do).sum() + (ht * dht).sum(), ins)]


def recurrence_reference(q, k, v, g, h0, do, dht, scale):
    """Same as reference() by explicit forward and reverse state recurrences (float64, no autograd
    graph, so T = 16384 stays cheap): dS_t = scale q_t^T do_t + e^{g_{t+1}} dS_{t+1}."""
    q, k, v, g, h0, do, dht = (x.detach().cpu().double()[0] for x in (q, k, v, g, h0, do, dht))
    T = q.shape[0]
    S = torch.empty(T + 1, *h0.shape, dtype=torch.float64)
    S[0] = h0
    eg = g.exp()
    for t in range(T):
        S[t + 1] = S[t] * eg[t, ..., None] + k[t, ..., None] * v[t, :, None, :]
    dS = torch.empty(T, *h0.shape, dtype=torch.float64)
    carry = dht
    for t in range(T - 1, -1, -1):
        carry = dS[t] = carry + scale * q[t, ..., None] * do[t, :, None, :]
        carry = carry * eg[t, ..., None]
    o = scale * torch.einsum("thk,thkv->thv", q, S[1:])
    dq = scale * torch.einsum("thv,thkv->thk", do, S[1:])
    dk = torch.einsum("thkv,thv->thk", dS, v)
    dv = torch.einsum("thk,thkv->thv", k, dS)
    dg = torch.einsum("thkv,thkv->thk", S[:-1], dS) * eg
    return [x[None] for x in (o, S[T], dq, dk, dv, dg, carry)]


def assert_close(got, ref, tol):
    for name, a, b in zip(("o", "ht", "dq", "dk", "dv", "dg", "dh0"), got, ref, strict=True):
        assert torch.isfinite(a).all(), name
        err = (a.double().cpu() - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
# Sub-chunk diagonal blocks: -1 all by reference products, -20 all pairwise, -4 a mix of both.
@pytest.mark.parametrize("gmin", [-1.0, -4.0, -20.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
@pytest.mark.usefixtures("cpu_isa")
def test_cpu_matches_oracle(T, gmin, dtype, tol):
    args = make(1, T, 1, 20, 36, gmin, dtype)  # K, V: whole 16x16 transpose blocks and remainders
    assert_close(grads(hgrn2_ext, *args, 0.3), reference(*args, 0.3), tol)


@pytest.mark.usefixtures("cpu_isa")
@pytest.mark.parametrize("K,V", [(7, 29), (24, 47), (64, 64)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_cpu_register_tiles(K, V, dtype, tol):
    """Widths and heights that reach every register tile of each instruction set's small matmuls, their
    remainder rows and the single columns after them (29 = 16 + 8 + 4 + 1, 47 = 32 + 8 + 4 + 3)."""
    args = make(2, 130, 2, K, V, -4.0, dtype)
    assert_close(grads(hgrn2_ext, *args, 0.3), reference(*args, 0.3), tol)


@pytest.mark.usefixtures("cpu_isa")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_cpu_varlen(dtype, tol):
    """Packed sequences (cu_seqlens) with their own initial and final states through hgrn2()."""
    cu = torch.tensor([0, 15, 80, 81, 200], dtype=torch.int32)
    q, k, v, g, _, do, _ = make(1, 200, 2, 20, 36, -3.0, dtype)
    gen = torch.Generator().manual_seed(3)
    h0, dht = (torch.randn(len(cu) - 1, 2, 20, 36, generator=gen, dtype=torch.float64) for _ in range(2))
    ins = [x.clone().requires_grad_() for x in (q, k, v, g, h0.to(dtype))]
    o, ht = hgrn2(*ins[:4], 0.3, ins[4], True, backend="cpu", cu_seqlens=cu)
    got = [o, ht, *torch.autograd.grad((o.double() * do).sum() + (ht.double() * dht).sum(), ins)]
    assert_close(got, varlen_reference(q, k, v, g, h0, do, dht, cu, 0.3), tol)


@pytest.mark.usefixtures("cpu_isa")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_cpu_decay_regimes_mixed_across_chunks(dtype, tol):
    """Chunks whose decay products come from exp(b) and exp(-b) (total decay within 80) next to chunks
    that need one exp per product, and a factorised chunk with one sub-chunk too steep (> 40) for
    reference products, in one call: each chunk picks its own path."""
    args = make(1, 250, 2, 20, 36, -1.0, dtype)
    g = args[3]
    g[:, 64:128] *= 0.5
    g[:, 80:96] = -3.0  # chunk 1: one steep sub-chunk (45 across it), total about 60
    g[:, 128:192] *= 4.0  # chunk 2: total about 128, no factorisation
    g[:, 192:, 1] *= 30.0  # chunk 3: head 1 far past it, head 0 factorised
    assert_close(grads(hgrn2_ext, *args, 0.3), reference(*args, 0.3), tol)


@pytest.mark.usefixtures("cpu_isa")
def test_cpu_heads_and_value_tiles():
    """Several (batch, head) pairs, and a single one with more threads than heads (value tiling)."""
    n = torch.get_num_threads()
    try:
        for B, H, nt in [(2, 3, n), (1, 1, 4)]:
            torch.set_num_threads(nt)
            args = make(B, 130, H, 8, 40, -3.0)
            assert_close(grads(hgrn2_ext, *args, 0.2), reference(*args, 0.2), 1e-12)
    finally:
        torch.set_num_threads(n)


@pytest.mark.usefixtures("cpu_isa")
def test_cpu_through_api_and_optional_states():
    q, k, v, g, h0, do, dht = make(2, 100, 2, 16, 8, -2.0, torch.float32)
    o, ht = hgrn2(q, k, v, g, backend="cpu")
    o_ref, _ = naive_hgrn2(q, k, v, g)
    assert ht is None and o.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    ins = [x.clone().requires_grad_() for x in (q, k, v, g)]
    hgrn2(*ins, backend="cpu")[0].backward(do.float())
    ref = [x.double().clone().requires_grad_() for x in (q, k, v, g)]
    naive_hgrn2(*ref)[0].backward(do)
    for a, b in zip(ins, ref, strict=True):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("cpu_isa")
def test_cpu_long_sequence_strong_decay():
    """T = 16384 with decays down to exp(-20) per step: finite and exact (a naive exp(-b) would overflow)."""
    args = make(1, 16384, 1, 8, 8, -20.0, torch.float32)
    args[3][:, 5000:5100] = 0.0  # a stretch without decay: long-range terms that must survive
    assert_close(grads(hgrn2_ext, *args, 0.5), recurrence_reference(*args, 0.5), 1e-4)


def test_recurrence_reference_matches_oracle():
    args = make(1, 70, 1, 3, 4, -2.0)
    assert_close(recurrence_reference(*args, 0.5), reference(*args, 0.5), 1e-12)


@pytest.mark.usefixtures("cpu_isa")
def test_cpu_gradcheck():
    q, k, v, g, h0, _, _ = make(1, 70, 2, 3, 2, -3.0)
    ins = [x.requires_grad_() for x in (q, k, v, g, h0)]
    assert torch.autograd.gradcheck(lambda q, k, v, g, h0: hgrn2_ext(q, k, v, g, 0.7, h0, True), ins)
    q, k, v, g, h0, _, _ = make(1, 20, 1, 2, 3, -20.0)
    ins = [x.requires_grad_() for x in (q, k, v, g, h0)]
    assert torch.autograd.gradcheck(lambda q, k, v, g, h0: hgrn2_ext(q, k, v, g, 0.7, h0, True), ins)


def test_bad_shapes_raise():
    from babylm_ds import _C

    q, k, v, g, h0, _, _ = make(1, 10, 1, 4, 4, -1.0)
    with pytest.raises(ValueError, match="q, k, g shapes differ"):
        _C.hgrn2_fwd(q, k[:, :5], v, g, 1.0, None, False)
    with pytest.raises(ValueError, match="initial_state"):
        _C.hgrn2_fwd(q, k, v, g, 1.0, h0[..., :2], False)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"initial_state must be \[N, H, K, V\]"):  # one state per sequence
        _C.hgrn2_fwd(q, k, v, g, 1.0, h0, False, cu)
    with pytest.raises(NotImplementedError, match="cu_seqlens"):
        hgrn2_ext(q, k, v, g, 1.0, None, False, cu_seqlens=cu)


def assert_cuda_matches_oracle(args, scale, tol):
    """The CUDA kernels (after their self-check in args' dtype) on make()-style args vs the oracle."""
    ok, why = ext_status("cuda", args[0].dtype)
    assert ok, why
    assert_close(grads(hgrn2_ext, *args, scale), reference(*args, scale), tol)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("gmin", [-1.0, -20.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_cuda_matches_oracle(T, gmin, dtype, tol):
    assert_cuda_matches_oracle(make(2, T, 3, 16, 24, gmin, dtype, "cuda"), 0.25, tol)


@pytest.mark.gpu
def test_cuda_long_sequence_strong_decay():
    args = make(1, 16384, 1, 64, 32, -20.0, torch.float32, "cuda")
    assert_close(grads(hgrn2_ext, *args, 0.125), recurrence_reference(*args, 0.125), 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_cuda_head_dim_128(dtype, tol):
    """K = V = 128 (two 64-column tiles each way; the shared memory fits an A100), g down to -20."""
    args = make(2, 300, 4, 128, 128, -20.0, dtype, "cuda")
    args[3][:, :100] *= 0.05  # chunks on the reference-product path too
    assert_cuda_matches_oracle(args, 128 ** -0.5, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("cu_device", ["cpu", "cuda"])
def test_cuda_varlen(dtype, tol, cu_device):
    ok, why = ext_status("cuda")
    assert ok, why
    cu = torch.tensor([0, 15, 80, 80, 300], dtype=torch.int32, device=cu_device)
    q, k, v, g, _, do, _ = make(1, 300, 2, 32, 40, -3.0, dtype, "cuda")
    gen = torch.Generator().manual_seed(3)
    h0, dht = (torch.randn(len(cu) - 1, 2, 32, 40, generator=gen).cuda() for _ in range(2))
    ins = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = hgrn2_ext(*ins[:4], 0.3, ins[4], True, cu_seqlens=cu)
    got = [o, ht, *torch.autograd.grad((o.float() * do).sum() + (ht * dht).sum(), ins)]
    assert_close(got, varlen_reference(q, k, v, g, h0, do, dht, cu.cpu(), 0.3), tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("K,V,off", [(20, 36, 8), (20, 36, 1), (16, 12, 0), (6, 16, 0)])
def test_cuda_row_alignment(dtype, tol, K, V, off):
    """K = 20, V = 36 at a storage offset that keeps every row 16-byte aligned where K es and V es are
    multiples of 16 (fp32: the cp.async path) and at one that does not, and the shapes whose per-head
    rows the former predicate took for aligned (bf16 V = 12, fp32 K = 6 at H = 2): fwd + bwd vs the oracle."""
    args = make(2, 130, 2, K, V, -3.0, dtype, "cuda")
    assert_cuda_matches_oracle([at_offset(x, off) for x in args[:4]] + args[4:], 0.3, tol)


@pytest.mark.gpu
def test_cuda_grid_folds_past_65535_sequence_heads():
    """B H = 4200 x 16 = 67,200 sequence-heads, past gridDim.y's 65535 (K1's grid before folding)."""
    assert_cuda_matches_oracle(make(4200, 2, 16, 8, 8, -2.0, torch.bfloat16, "cuda"), 0.3, 5e-2)


@pytest.mark.gpu
def test_cuda_fp16_state_past_fp16_range():
    """fp16 with a state and a state gradient past 65504 (fp16_range_inputs): finite and correct."""
    assert_cuda_matches_oracle(fp16_range_inputs("cuda"), 1.0, 1e-2)


def test_cuda_selfcheck_catches_late_faults_and_checks_every_dtype(monkeypatch):
    """The CUDA self-check, run here on the CPU kernels (same interface): it synchronizes before reading
    anything back, so a fault that surfaces only then (as an asynchronous CUDA error does) fails it with
    one line naming backend, dtype and error; fp32, bf16 and fp16 are each compared with the oracle, and
    a wrong result names its dtype and output."""
    from babylm_ds.ops.hgrn2 import ext

    check, cpu, real = ext._cuda_selfcheck.__wrapped__, torch.device("cpu"), ext._C
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert check(cpu, dtype) == (True, "")

    def fault(device):
        raise RuntimeError("CUDA error: misaligned address\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(ext, "_sync", fault)
    ok, why = check(cpu, torch.bfloat16)
    assert not ok and "\n" not in why and "misaligned address" in why, why
    assert why.startswith("hgrn2 cuda self-check (bfloat16 on cpu): the kernels raised RuntimeError"), why
    monkeypatch.setattr(ext, "_sync", lambda device: None)

    class Fp16Off:  # the fp16 kernels' dq 10% off, the others right
        def __getattr__(self, name):
            return getattr(real, name)

        def hgrn2_bwd(self, q, *a):
            dq, *rest = real.hgrn2_bwd(q, *a)
            return (dq * 1.1 if q.dtype == torch.float16 else dq, *rest)

    monkeypatch.setattr(ext, "_C", Fp16Off())
    assert check(cpu, torch.float32) == (True, "") and check(cpu, torch.bfloat16) == (True, "")
    ok, why = check(cpu, torch.float16)
    assert not ok and why.startswith("hgrn2 cuda self-check (float16 on cpu): dq relative error"), why


@pytest.mark.gpu
def test_cuda_lean_variants(monkeypatch):
    """The fp32 kernels of a 99 KiB device (lean K1 / K3), run here by capping the planned shared memory
    (BABYLM_DS_SMEM_OPTIN), K = 128, V = 72: vs the oracle and bit for bit the full kernels."""
    ok, why = ext_status("cuda", torch.float32)
    assert ok, why
    args = make(2, 150, 2, 128, 72, -2.0, torch.float32, "cuda")
    full = grads(hgrn2_ext, *args, 0.2)
    monkeypatch.setenv("BABYLM_DS_SMEM_OPTIN", "101376")
    lean = grads(hgrn2_ext, *args, 0.2)
    assert_close(lean, reference(*args, 0.2), 1e-4)
    for a, b in zip(full, lean, strict=True):
        assert torch.equal(a, b)

"""The CUDA kernels' code (csrc/hgrn2_tile.h, hgrn2_kernels.h) run on the CPU by warp emulation: the
mma / ldmatrix fragment layouts of the PTX ISA and the hardware's operand rounding, checked against
plain matmuls and the float64 per-step oracle. The same kernels on a GPU: test_ops_ext.py (gpu)."""
import itertools

import pytest
import torch

from babylm_ds.ops.hgrn2.ext import ext_status, hgrn2_emu
from tests.test_ops_ext import assert_close, at_offset, fp16_range_inputs, grads, make, reference, varlen_reference

ok, reason = ext_status()
pytestmark = pytest.mark.skipif(not ok, reason=reason)


def tf32(x):
    """Round fp32 to tf32 as cvt.rna.tf32.f32: to nearest, ties away from zero, 10 mantissa bits."""
    u = x.float().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    u = ((u + 0x1000) & 0xFFFFE000).to(torch.int32)
    return u.view(torch.float32)


ROUND = {"bf16": lambda x: x.bfloat16(), "fp16": lambda x: x.half(), "tf32": tf32, "tf32x3": lambda x: x.float(),
         "fp64": lambda x: x}


@pytest.mark.parametrize("mode", ["bf16", "fp16", "tf32", "tf32x3", "fp64"])
@pytest.mark.parametrize("src", ["kn", "nk", "fn"])
def test_warp_mma_matches_matmul_of_rounded_operands(mode, src):
    """One emulated warp's 16 x 48 GEMM over k = 32 (ldmatrix from smem tiles for kn / nk, element
    gathers for fn) equals the float64 matmul of the operands rounded as the tensor cores take them."""
    from babylm_ds import _C

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(16, 32, generator=gen, dtype=torch.float64)
    b = torch.randn(32, 48, generator=gen, dtype=torch.float64)
    if mode != "fp64":
        a, b = a.float().double(), b.float().double()
    d = _C.hgrn2_tile_gemm(a, b, mode, src)
    ref = ROUND[mode](a).double() @ ROUND[mode](b).double()
    tol = {"fp64": 1e-14, "tf32x3": 1e-6}.get(mode, 2e-6)  # fp32 accumulation; 3xTF32: vs unrounded fp32
    err = (d - ref).abs().max().item() / ref.abs().max().item()
    assert err < tol, f"{mode}/{src}: {err:.2e}"
    if mode in ("bf16", "fp16", "tf32"):  # the rounding is really applied
        assert (d - a @ b).abs().max().item() / ref.abs().max().item() > 1e-4


def test_rounding_modes_of_the_emulation():
    """bf16 / fp16 round to nearest even and tf32 rounds ties away (cvt.rna): a 16 x 16 identity times
    a column of ties picks them out of the emulated mma."""
    from babylm_ds import _C

    eye = torch.eye(16, dtype=torch.float64)
    ties = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11)] + [0.0] * 11,
                        dtype=torch.float64)[:, None].repeat(1, 16)
    bf = _C.hgrn2_tile_gemm(eye, ties, "bf16", "kn")[:2, 0].tolist()
    assert bf == [1.0, 1 + 2 ** -6]  # even mantissa
    hf = _C.hgrn2_tile_gemm(eye, ties, "fp16", "kn")[2:4, 0].tolist()
    assert hf == [1.0, 1 + 2 ** -9]
    t = _C.hgrn2_tile_gemm(eye, ties, "tf32", "fn")[2:5, 0].tolist()
    assert t == [1 + 2 ** -10, 1 + 2 ** -9, -(1 + 2 ** -10)]  # away from zero


TS = [1, 15, 16, 17, 63, 64, 65, 200]


def emu(mode):
    return lambda *a: hgrn2_emu(*a, mode=mode)


def rounded(args, mode):
    """bf16 / fp16 runs take inputs that the kernels' 16-bit loads hold exactly."""
    if mode in ("bf16", "fp16"):
        cast = ROUND[mode]
        args = [cast(x).float() for x in args[:4]] + [x.float() for x in args[4:]]
    return args


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("gmin", [-1.0, -20.0])
@pytest.mark.parametrize("mode,tol", [("fp64", 1e-11), ("tf32x3", 1e-4), ("bf16", 3e-2)])
def test_emulated_kernels_match_oracle(T, gmin, mode, tol):
    """Forward, final state and all gradients (d initial state and a final-state gradient included);
    g = -20 per step puts every diagonal block on the pairwise path, -1 on reference products."""
    args = make(2, T, 2, 20, 36, gmin, torch.float64 if mode == "fp64" else torch.float32)
    args = rounded(args, mode)
    if mode != "fp64":
        args = [x.float() for x in args]
    assert_close(grads(emu(mode), *args, 0.3), reference(*args, 0.3), tol)


def test_emulated_fp16_and_mixed_decay_chunks():
    """fp16 (reference span e^8) and one call mixing steep and flat 16-row blocks in every chunk."""
    args = rounded(make(1, 130, 2, 16, 24, -0.3, torch.float32), "fp16")
    args[3][:, 20:36] = -3.0
    args[3][:, 70:75, 1] = -15.0
    for mode, tol in (("fp16", 1e-2), ("tf32x3", 1e-4)):
        assert_close(grads(emu(mode), *args, 0.25), reference(*args, 0.25), tol)


def test_emulated_kernels_head_dim_128():
    """K = V = 128: two 64-column tiles on both sides (K2 / K3 loop over them, K1 splits on them)."""
    args = make(1, 70, 1, 128, 128, -2.0, torch.float32)
    assert_close(grads(emu("tf32x3"), *args, 128 ** -0.5), reference(*args, 128 ** -0.5), 1e-4)


def test_emulated_varlen_matches_per_sequence_oracle():
    """cu_seqlens: packed B = 1 rows split into sequences (an empty one included), each with its own
    initial and final state, equal to the oracle run sequence by sequence."""
    cu = torch.tensor([0, 15, 80, 80, 150], dtype=torch.int32)
    N, H, K, V = len(cu) - 1, 2, 12, 20
    q, k, v, g, _, do, _ = make(1, int(cu[-1]), H, K, V, -3.0)
    gen = torch.Generator().manual_seed(3)
    h0, dht = (torch.randn(N, H, K, V, generator=gen, dtype=torch.float64) for _ in range(2))
    ins = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = hgrn2_emu(*ins[:4], 0.4, ins[4], True, cu_seqlens=cu, mode="fp64")
    got = [o, ht, *torch.autograd.grad((o * do).sum() + (ht * dht).sum(), ins)]
    assert_close(got, varlen_reference(q, k, v, g, h0, do, dht, cu, 0.4), 1e-11)


@pytest.mark.parametrize("T,gmin", [(70, -3.0), (20, -20.0)])
def test_emulated_fp64_gradcheck(T, gmin):
    q, k, v, g, h0, _, _ = make(1, T, 1, 3, 2, gmin)
    ins = [x.requires_grad_() for x in (q, k, v, g, h0)]
    assert torch.autograd.gradcheck(lambda *x: hgrn2_emu(*x[:4], 0.7, x[4], True, mode="fp64"), ins, fast_mode=True)


# ---------------------------------------------------------------------------------------------------
# The launch decisions of the CUDA launcher, shared with the emulation: the 16-byte cp.async predicate,
# grid folding, the shared-memory plan per device, and fp16's state range.

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32x3": torch.float32, "fp64": torch.float64}


def row_starts_aligned(t):
    """Every 16-byte piece the kernels copy from t, a contiguous [..., D] array read as rows of D (the
    piece addresses row start + column tile 0, 64, ...), counted one by one: all 16-byte aligned?"""
    D, es = t.shape[-1], t.element_size()
    return all((t.data_ptr() + (r * D + c) * es) % 16 == 0 for r in range(t.numel() // D) for c in range(0, D, 64))


def test_vec_predicate_matches_every_row_start():
    """hgrn2_vec_ok, the launcher's predicate for the 16-byte cp.async loads, is true exactly when every
    row of q, k, g, v (storage offsets included) and of the fp32 states starts 16-byte aligned, row by
    row. The former test (H K es, H V es multiples of 16, V % 4 == 0, aligned bases) missed per-head rows:
    bf16 V = 12 and fp32 K = 6 at H = 2."""
    from babylm_ds import _C

    cases = {True: 0, False: 0}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        es = torch.empty((), dtype=dtype).element_size()
        for H, K, V, off in itertools.product((1, 2, 3), (6, 8, 20, 72), (4, 12, 16, 36), (0, 1, 8)):
            q = at_offset(torch.zeros(1, 3, H, K, dtype=dtype), off)
            v = at_offset(torch.zeros(1, 3, H, V, dtype=dtype), off)
            k, g = torch.zeros_like(q), torch.zeros_like(q)
            states = torch.empty(2, H, K, V)
            got = _C.hgrn2_vec_ok([q, k, v, g, states])
            want = all(row_starts_aligned(t) for t in (q, k, v, g, states))
            assert got == want, (dtype, H, K, V, off)
            cases[got] += 1
            old = H * K * es % 16 == 0 and H * V * es % 16 == 0 and V % 4 == 0 and off * es % 16 == 0
            if (dtype, K, V, off) in ((torch.bfloat16, 8, 12, 0), (torch.float32, 6, 16, 0)) and H == 2:
                assert old and not got  # the cases the former test let through
    assert min(cases.values()) > 50, cases
    x = torch.zeros(1, 4, 2, 16)
    assert _C.hgrn2_vec_ok([x]) and not _C.hgrn2_vec_ok([x[..., :8]])  # rows not where the kernels read them


def inputs_in(mode, B, T, H, K, V, gmin, off=0):
    """make()'s inputs rounded to the mode's dtype and stored in it (at a storage offset of `off`
    elements), so that the emulation loads them as the launcher passes them."""
    args = make(B, T, H, K, V, gmin, torch.float64)
    dt = DTYPES[mode]
    return [at_offset(x.to(dt), off) for x in args[:4]] + [x.to(torch.float64 if mode == "fp64" else torch.float32)
                                                          for x in args[4:]]


@pytest.mark.parametrize("mode,tol", [("fp64", 1e-11), ("tf32x3", 1e-4), ("bf16", 3e-2), ("fp16", 1e-2)])
@pytest.mark.parametrize("off", [0, 8])  # elements: 16 B in bf16 / fp16, 32 B in fp32
def test_emulated_16_byte_and_element_loads_match_oracle(mode, tol, off):
    """Both load paths of the kernels, cp.async in 16-byte pieces (every piece's alignment checked) and
    element by element, against the float64 oracle: K = 24, V = 40 (partial tiles, aligned rows), a
    storage offset, two sequences with a ragged last chunk: bit for bit the same results. The predicate
    takes the 16-byte path here."""
    from babylm_ds import _C

    args = inputs_in(mode, 2, 100, 2, 24, 40, -3.0, off)
    assert _C.hgrn2_vec_ok(args[:4])
    ref = reference(*args, 0.3)
    outs = [grads(lambda *a: hgrn2_emu(*a, mode=mode, vec=vec), *args, 0.3) for vec in (True, False)]
    assert_close(outs[0], ref, tol)
    for a, b in zip(*outs, strict=True):  # the same values loaded either way
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode,K,V", [("bf16", 16, 12), ("tf32x3", 6, 16), ("fp16", 24, 20)])
def test_bypassed_predicate_faults_where_the_device_would(mode, K, V):
    """Shapes whose per-head rows are not 16-byte aligned (bf16 V = 12, fp32 K = 6 at H = 2), and a
    storage offset of one element: the predicate keeps them on element loads (correct results); forced
    onto the 16-byte path the emulated cp.async raises, as the device would fault (misaligned address)."""
    args = inputs_in(mode, 1, 40, 2, K, V, -2.0)
    tol = {"bf16": 3e-2, "fp16": 1e-2, "tf32x3": 1e-4}[mode]
    assert_close(grads(emu(mode), *args, 0.5), reference(*args, 0.5), tol)
    with pytest.raises(RuntimeError, match="misaligned 16-byte cp.async"):
        hgrn2_emu(*args[:4], 0.5, args[4], True, mode=mode, vec=True)
    shifted = inputs_in(mode, 1, 40, 2, 16, 16, -2.0, off=1)
    assert_close(grads(emu(mode), *shifted, 0.5), reference(*shifted, 0.5), tol)
    with pytest.raises(RuntimeError, match="misaligned 16-byte cp.async"):
        hgrn2_emu(*shifted[:4], 0.5, shifted[4], True, mode=mode, vec=True)


def test_emulated_lean_variants_match_oracle():
    """The fp32 kernels a device with 99 KiB of shared memory per block runs (smem_optin 101,376 B, sm_86 /
    sm_89: K1 single-buffered, K3 loading q, k, g after its V loop into that loop's tiles), at K = 128,
    V = 72 (two tiles each way): bit for bit the full variants' results, and the oracle's. With less than
    they need, the launcher's one-line error naming kernel and bytes."""
    from babylm_ds import _C

    assert _C.hgrn2_smem_plan("tf32x3", 101376)[:2] == (True, True)
    args = inputs_in("tf32x3", 1, 150, 2, 128, 72, -2.0)
    outs = [grads(lambda *a: hgrn2_emu(*a, mode="tf32x3", smem_optin=smem), *args, 0.2) for smem in (None, 101376)]
    assert_close(outs[1], reference(*args, 0.2), 1e-4)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match=r"^hgrn2 cuda: kernel K1 \(fp32, lean\) needs 72704 B of shared memory "
                                           r"per block; this GPU allows 65536 B"):
        hgrn2_emu(*args[:4], 0.2, args[4], True, mode="tf32x3", smem_optin=65536)


def test_launch_grids_fit_the_cuda_limits():
    """Every kernel's launch grid stays within x <= 2^31 - 1, y, z <= 65535 for any sequence count and
    token count (K1's own grid has y = N H: 67,200 at N = 4200, H = 16), covers every block, and is the
    kernel's own grid where that fits."""
    from babylm_ds import _C

    lim = (2 ** 31 - 1, 65535, 65535)
    folded = 0
    for N, T, H, K, V, varlen in [(4200, 64, 16, 64, 64, False), (10 ** 6, 2048, 16, 128, 128, False),
                                  (2 * 10 ** 6, 2 ** 31 - 2 ** 20, 32, 64, 64, True), (3, 100, 2, 20, 36, False),
                                  (70000, 70000 * 64, 1, 256, 256, True)]:
        grids = _C.hgrn2_launch_grids(N, T, H, K, V, varlen)
        assert [name for name, _, _ in grids] == ["k1", "k2", "k1", "k1_rev", "k2_bwd", "k3"]
        for name, g, l in grids:
            assert all(0 < a <= b for a, b in zip(l, lim, strict=True)), (name, g, l)
            total = g[0] * g[1] * g[2]
            assert total <= l[0] * l[1] * l[2] < total + l[0] * l[1], (name, g, l)
            fits = all(a <= b for a, b in zip(g, lim, strict=True))
            assert (l == g) == fits, (name, g, l)
            folded += not fits
    assert folded >= 4


@pytest.mark.parametrize("varlen", [False, True])
def test_folded_launch_computes_the_same(varlen):
    """The grids folded within tiny limits (x <= 3, y <= 2: every kernel folds, blocks past the end
    idle) give bit for bit the results of the unfolded launch."""
    from babylm_ds import _C

    args = inputs_in("tf32x3", 1 if varlen else 3, 150, 2, 70, 20, -3.0)
    cu = torch.tensor([0, 20, 90, 150], dtype=torch.int32) if varlen else None
    if varlen:
        args[4], args[6] = (torch.randn(3, 2, 70, 20) for _ in range(2))
    grids = _C.hgrn2_launch_grids(3, 150, 2, 70, 20, varlen, [3, 2, 65535])
    assert all(l != g for _, g, l in grids)
    outs = [grads(lambda *a: hgrn2_emu(*a, cu_seqlens=cu, mode="tf32x3", grid_max=gm), *args, 0.3)
            for gm in (None, (3, 2, 65535))]
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


def test_emulated_fp16_state_past_fp16_range():
    """fp16 mode, a weak decay over 640 steps: head 0's state and head 1's state gradient grow past
    65504, fp16's largest, where rounding them to fp16 mma operands gave inf, then NaN. The results stay
    finite and close to the float64 oracle (o, dq, dk, dv, fp16 outputs, stay in fp16's range)."""
    args = fp16_range_inputs()
    ref = reference(*args, 1.0)
    assert ref[1][0, 0].abs().max() > 65504 and ref[6][0, 1].abs().max() > 65504  # final S, dh0
    assert max(ref[i].abs().max() for i in (0, 2, 3, 4)) < 6e4
    assert_close(grads(emu("fp16"), *args, 1.0), ref, 1e-2)

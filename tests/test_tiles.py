"""The CUDA kernels' code (csrc/hgrn2_tile.h, hgrn2_kernels.h) run on the CPU by warp emulation: the
mma / ldmatrix fragment layouts of the PTX ISA and the hardware's operand rounding, checked against
plain matmuls and the float64 per-step oracle. The same kernels on a GPU: test_ops_ext.py (gpu)."""
import pytest
import torch

from babylm_ds.ops.hgrn2.ext import ext_status, hgrn2_emu
from tests.test_ops_ext import assert_close, grads, make, reference, varlen_reference

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
    a, b = torch.randn(16, 32, generator=gen, dtype=torch.float64), torch.randn(32, 48, generator=gen, dtype=torch.float64)
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

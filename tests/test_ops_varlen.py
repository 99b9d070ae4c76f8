"""HGRN2 op: packed sequences (cu_seqlens), the fla backend and the auto table."""
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from babylm_ds.ops import hgrn2, naive_hgrn2
from babylm_ds.ops.hgrn2 import api
from babylm_ds.ops.hgrn2.fla import fla_hgrn2, fla_status
from tests.test_ops import assert_close, make, run_with_grads

ROOT = Path(__file__).resolve().parent.parent
LENS = [1, 16, 63, 65, 17]  # chunk edges and a length-1 sequence


def packed(lens, K=8, V=12, H=2, dtype=torch.float64, gmin=-20.0, device="cpu"):
    """q, k, v, g [1, sum(lens), H, .], h0 [N, H, K, V] and the CPU offsets."""
    q, k, v, g, _ = make(1, sum(lens), H, K, V, dtype=dtype, gmin=gmin, device=device)
    h0 = make(len(lens), 1, H, K, V, dtype=dtype, seed=5, device=device)[4]
    return q, k, v, g, h0, torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])


def per_sequence_oracle(q, k, v, g, h0, cu, scale=None):
    """The float64 oracle run on each sequence alone, outputs and gradients concatenated."""
    outs = []
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        ins = [x[:, s:e].detach().cpu().double() for x in (q, k, v, g)] + [h0[n:n + 1].cpu().double()]
        outs.append(run_with_grads(lambda *a: naive_hgrn2(*a[:4], scale, a[4], True), *ins, seed=n))
    cat = [torch.cat(x, 0 if i in (1, 6) else 1) for i, x in enumerate(zip(*outs, strict=True))]
    return cat


def varlen_grads(fn, q, k, v, g, h0, cu):
    """Forward + backward of the packed call with per-sequence upstream gradients that match
    per_sequence_oracle's (same seeds per sequence)."""
    ins = [x.detach().clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = fn(*ins)
    do, dht = [], []
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        gen = torch.Generator().manual_seed(n)
        do.append(torch.randn(o[:, s:e].shape, generator=gen, dtype=torch.float64))
        dht.append(torch.randn(ht[n:n + 1].shape, generator=gen, dtype=torch.float64))
    do, dht = torch.cat(do, 1).to(o), torch.cat(dht).to(ht)
    ((o * do).sum() + (ht * dht).sum()).backward()
    return [o, ht] + [x.grad for x in ins]


def test_naive_varlen_restarts_the_state():
    q, k, v, g, h0, cu = packed(LENS)
    o, ht = naive_hgrn2(q, k, v, g, 0.5, h0, True, cu_seqlens=cu)
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        o_n, ht_n = naive_hgrn2(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], 0.5, h0[n:n + 1], True)
        torch.testing.assert_close(o[:, s:e], o_n, rtol=0, atol=0)
        torch.testing.assert_close(ht[n:n + 1], ht_n, rtol=0, atol=0)


@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("cpu", torch.float32, 1e-5)])
def test_varlen_matches_oracle_per_sequence(backend, dtype, tol):
    if backend == "cpu":
        pytest.importorskip("babylm_ds._C")
    q, k, v, g, h0, cu = packed(LENS, dtype=dtype)
    fn = lambda *a: hgrn2(*a[:4], 0.7, a[4], True, backend=backend, cu_seqlens=cu)  # noqa: E731
    got = varlen_grads(fn, q, k, v, g, h0, cu)
    assert got[1].shape == (len(LENS), 2, 8, 12)
    assert_close(got, per_sequence_oracle(q, k, v, g, h0, cu, 0.7), tol)


def test_varlen_without_states_and_int32_offsets():
    q, k, v, g, _, cu = packed([3, 70], dtype=torch.float32)
    o, ht = hgrn2(q, k, v, g, cu_seqlens=cu.int())
    ref, _ = naive_hgrn2(q, k, v, g, cu_seqlens=cu)
    assert ht is None
    assert_close([o], [ref], 1e-5, names=("o",))


BAD_VARLEN = [
    (dict(cu_seqlens=[0, 5]), TypeError, "cu_seqlens must be a 1-D int32/int64 tensor"),
    (dict(cu_seqlens=torch.tensor([0.0, 5.0])), TypeError, "cu_seqlens must be a 1-D int32/int64"),
    (dict(cu_seqlens=torch.tensor([5])), TypeError, "N \\+ 1 sequence offsets"),
    (dict(cu_seqlens=torch.tensor([0, 2, 4])), ValueError, "rise strictly from 0 to T = 5"),
    (dict(cu_seqlens=torch.tensor([0, 2, 2, 5])), ValueError, "no empty sequences"),
    (dict(cu_seqlens=torch.tensor([1, 5])), ValueError, "rise strictly from 0"),
    (dict(cu_seqlens=torch.tensor([0, 2, 5]), B=2), ValueError, "batch size must be 1, got B = 2"),
    (dict(cu_seqlens=torch.tensor([0, 2, 5]), N=3), ValueError, r"initial_state shape .* \(N, H, K, V\)"),
    (dict(cu_seqlens=torch.tensor([0, 2, 5], device="meta")), ValueError, "cu_seqlens is on meta"),
]


@pytest.mark.parametrize("over,exc,msg", BAD_VARLEN)
def test_bad_varlen_inputs(over, exc, msg):
    B, N = over.pop("B", 1), over.pop("N", 2)
    q, k, v, g, _ = make(B, 5, 2, 4, 3, dtype=torch.float32)
    h0 = torch.zeros(N, 2, 4, 3)
    with pytest.raises(exc, match=msg):
        hgrn2(q, k, v, g, initial_state=h0, backend="torch", **over)


def test_auto_order_follows_the_cited_benchmark():
    """AUTO on GPU = backends sorted by the bf16 fwd+bwd times in benchmarks/results/gpu_h200.md,
    at every T of that table (the source named beside AUTO)."""
    assert "benchmarks/results/gpu_h200.md" in Path(api.__file__).read_text()
    text = (ROOT / "benchmarks" / "results" / "gpu_h200.md").read_text()
    table = text[text.index("| T | cuda | triton | torch | fla chunk_gla | SDPA |"):].split("\n\n")[0]
    names = ("cuda", "triton", "torch", "fla")
    rows = [r for r in table.splitlines()[2:] if re.match(r"\| \d+ \|", r)]
    assert len(rows) == 3
    for row in rows:
        ms = dict(zip(names, map(float, row.strip("|").split("|")[1:5]), strict=True))
        assert list(api.AUTO["cuda"]) == sorted(names, key=ms.get), row


@pytest.fixture
def tf32():
    """set(allowed): TF32 matmul precision for this test only."""
    old = torch.get_float32_matmul_precision()
    yield lambda allowed: torch.set_float32_matmul_precision("high" if allowed else "highest")
    torch.set_float32_matmul_precision(old)


@pytest.fixture
def fake_fla(monkeypatch):
    """A stand-in `fla.ops.gla` (the real chunk_gla needs a GPU): chunk_gla computed by the oracle
    with fla's signature and output dtypes; records its arguments in .seen."""
    mod = types.ModuleType("fla.ops.gla")
    mod.seen = {}

    def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
                  state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None):
        mod.seen.update(scale=scale, h0=initial_state, cu=cu_seqlens, cu_cpu=cu_seqlens_cpu)
        o, ht = naive_hgrn2(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
        return o.float(), (None if ht is None else ht.double())

    mod.chunk_gla = chunk_gla
    for name in ("fla", "fla.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "fla.ops.gla", mod)
    return mod


def test_fla_declines_with_reasons(tf32, fake_fla, monkeypatch):
    q, k, v, g, _ = make(1, 4, 1, 4, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="'fla' unavailable: fla's Triton kernels need CUDA tensors"):
        hgrn2(q, k, v, g, backend="fla")
    cuda = torch.device("cuda")
    assert "float64" in fla_status(cuda, torch.float64)[1]
    tf32(False)
    ok, reason = fla_status(cuda, torch.float32)
    assert not ok and "set_float32_matmul_precision('high')" in reason
    tf32(True)
    assert fla_status(cuda, torch.float32) == (True, "")
    monkeypatch.setitem(sys.modules, "fla.ops.gla", None)  # as if not installed
    ok, reason = fla_status(cuda, torch.bfloat16)
    assert not ok and "pip install .[fla]" in reason


def test_fla_wrapper_conventions(fake_fla):
    """fla_hgrn2's call of chunk_gla: arguments by name, fp32 initial state, offsets on the device
    plus a CPU copy, outputs cast to our dtypes."""
    q, k, v, g, h0, cu = packed([5, 9], dtype=torch.bfloat16, gmin=-1.0)
    o, ht = fla_hgrn2(q, k, v, g, 0.3, h0.double(), True, cu_seqlens=cu.int())
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32 and ht.shape == (2, 2, 8, 12)
    seen = fake_fla.seen
    assert seen["scale"] == 0.3 and seen["h0"].dtype == torch.float32
    assert seen["cu"].dtype == torch.long and torch.equal(seen["cu_cpu"], cu)
    ref, _ = naive_hgrn2(q, k, v, g, 0.3, h0, True, cu)
    torch.testing.assert_close(o.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert fla_hgrn2(q, k, v, g, 0.3, None, False)[1] is None


def has_fla():
    return importlib.util.find_spec("fla") is not None


needs_fla = pytest.mark.skipif(not has_fla(), reason="flash-linear-attention is not installed (pip install .[fla])")


def gpu_precision(backend):
    """(allow TF32, relative tolerance) of an fp32 GPU check of `backend` against the float64 oracle: TF32
    only for fla's chunk_gla (it declines fp32 inputs without it; ~1e-3 error), and for auto when it will
    pick fla; every other backend at full fp32 precision (TF32 would cost the torch backend ~1e-3)."""
    tf32 = backend == "fla" or backend == "auto" and has_fla() and api.AUTO["cuda"][0] == "fla"
    return tf32, 5e-3 if tf32 else 1e-4


def test_gpu_checks_use_tf32_only_for_fla(monkeypatch):
    assert gpu_precision("torch") == gpu_precision("triton") == gpu_precision("cuda") == (False, 1e-4)
    assert gpu_precision("fla") == (True, 5e-3)
    monkeypatch.setitem(sys.modules, "fla", None)  # fla absent (the GPU machine without the wheels)
    assert not has_fla() and gpu_precision("auto") == (False, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch", pytest.param("fla", marks=needs_fla), "auto"])
@pytest.mark.parametrize("offsets_on", ["cpu", "cuda"])
def test_gpu_varlen_backends(backend, offsets_on, tf32):
    allow, tol = gpu_precision(backend)
    tf32(allow)
    q, k, v, g, h0, cu = packed(LENS, K=64, V=96, dtype=torch.float32, device="cuda")
    fn = lambda *a: hgrn2(*a[:4], None, a[4], True, backend=backend,  # noqa: E731
                          cu_seqlens=cu.to(offsets_on))
    got = varlen_grads(fn, q, k, v, g, h0, cu)
    assert_close(got, per_sequence_oracle(q, k, v, g, h0, cu), tol)


@pytest.mark.gpu
@needs_fla
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("T,gmin", [(1, -1.0), (65, -20.0), (300, -1.0)])
def test_gpu_fla_backend(dtype, rtol, T, gmin, tf32):
    tf32(True)
    from tests.test_ops import oracle

    ins = make(2, T, 3, 64, 96, dtype=dtype, gmin=gmin, device="cuda")
    got = run_with_grads(lambda q, k, v, g, h0: hgrn2(q, k, v, g, None, h0, True, backend="fla"), *ins)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert_close(got, oracle(*ins), rtol)

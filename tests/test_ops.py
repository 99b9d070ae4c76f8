"""HGRN2 op: chunked torch / Triton backends against the per-step float64 oracle, API checks."""
import logging
import os
import sys
import types

import pytest
import torch

from babylm_ds.ops import hgrn2, hgrn2_step, naive_hgrn2
from babylm_ds.ops.hgrn2 import api


def make(B, T, H, K, V, dtype=torch.float64, gmin=-1.0, device="cpu", seed=0):
    """q, k, v, g, h0 with g uniform in [gmin, 0]."""
    gen = torch.Generator().manual_seed(seed)
    q, k, g = (torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(3))
    q, k, g = q * 2 - 1, k * 2 - 1, g * gmin
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return [x.to(device, dtype) for x in (q, k, v, g)] + [h0.to(device, state_dtype)]


def run_with_grads(fn, q, k, v, g, h0, seed=1):
    """Forward with initial and final state, backward of a random projection of (o, final state)."""
    ins = [x.detach().clone().requires_grad_() for x in (q, k, v, g, h0)]
    o, ht = fn(*ins)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
    dht = torch.randn(ht.shape, generator=gen, dtype=torch.float64).to(ht.device, ht.dtype)
    ((o * do).sum() + (ht * dht).sum()).backward()
    return [o, ht] + [x.grad for x in ins]


def oracle(q, k, v, g, h0, scale=None):
    """naive_hgrn2 in float64 on CPU of the (possibly low-precision) inputs."""
    cast = [x.detach().cpu().double() for x in (q, k, v, g, h0)]
    return run_with_grads(lambda *a: naive_hgrn2(*a[:4], scale, a[4], True), *cast)


def assert_close(got, ref, rtol, names=("o", "ht", "dq", "dk", "dv", "dg", "dh0")):
    for name, a, b in zip(names, got, ref, strict=False):
        a = a.detach().cpu().double()
        assert torch.isfinite(a).all(), name
        err = (a - b).abs().max().item()
        assert err <= rtol * max(b.abs().max().item(), 1.0), f"{name}: max err {err:.3g}"


GRID = [(2, T, 2, 8, 12, gmin) for T in (1, 63, 64, 65, 200) for gmin in (-1.0, -20.0)]
GRID += [(1, 130, 1, 16, 5, -20.0), (1, 70, 1, 3, 33, -1.0)]


@pytest.mark.parametrize("B,T,H,K,V,gmin", GRID)
def test_torch_matches_oracle_float64(B, T, H, K, V, gmin):
    ins = make(B, T, H, K, V, gmin=gmin)
    fn = lambda q, k, v, g, h0: hgrn2(q, k, v, g, 0.7, h0, True, backend="torch")  # noqa: E731
    assert_close(run_with_grads(fn, *ins), oracle(*ins, scale=0.7), 1e-10)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("T,gmin", [(65, -20.0), (200, -1.0)])
def test_torch_low_precision_io(dtype, rtol, T, gmin):
    ins = make(2, T, 2, 8, 12, dtype=dtype, gmin=gmin)
    got = run_with_grads(lambda *a: hgrn2(*a[:4], initial_state=a[4], output_final_state=True,
                                          backend="torch"), *ins)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert [x.dtype for x in got[2:]] == [dtype] * 4 + [torch.float32]
    assert_close(got, oracle(*ins), rtol)


def test_long_sequence_strong_decay():
    """T = 16384 with steps of no decay and of g down to -20: exact forward, consistent gradient."""
    B, T, H, K, V = 1, 16384, 1, 4, 6
    q, k, v, g, _ = make(B, T, H, K, V, gmin=-20.0)
    g = g * (torch.rand(B, T, H, 1, generator=torch.Generator().manual_seed(3)) < 0.5)
    with torch.no_grad():
        o, ht = hgrn2(q.float(), k.float(), v.float(), g.float(), output_final_state=True, backend="torch")
        o_ref, ht_ref = naive_hgrn2(q, k, v, g, None, None, True)
    assert_close([o, ht], [o_ref, ht_ref], 1e-5)
    # directional derivative of a float64 loss against a central finite difference
    ins = [x.clone().requires_grad_() for x in (q, k, v, g)]
    w = torch.randn(B, T, H, V, dtype=torch.float64)
    loss = lambda *a: (hgrn2(*a, backend="torch")[0] * w).sum()  # noqa: E731
    loss(*ins).backward()
    dirs = [torch.randn_like(x) for x in ins]
    dirs[3] = dirs[3] * (g < -1e-3)  # keep g <= 0 under the perturbation
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(*(x + eps * d for x, d in zip(ins, dirs, strict=True)))
              - loss(*(x - eps * d for x, d in zip(ins, dirs, strict=True)))) / (2 * eps)
    an = sum((x.grad * d).sum() for x, d in zip(ins, dirs, strict=True))
    assert all(torch.isfinite(x.grad).all() for x in ins)
    assert abs(fd - an) <= 1e-6 * abs(an)


def test_chunked_equals_step_by_step():
    q, k, v, g, h0 = make(2, 67, 3, 8, 5, dtype=torch.float32, gmin=-3.0)
    o, ht = hgrn2(q, k, v, g, initial_state=h0, output_final_state=True)
    S, outs = h0, []
    for t in range(q.shape[1]):
        o_t, S = hgrn2_step(q[:, t], k[:, t], v[:, t], g[:, t], S)
        outs.append(o_t)
    assert S.dtype == torch.float32
    torch.testing.assert_close(torch.stack(outs, 1), o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, ht, rtol=1e-5, atol=1e-5)
    o0, S0 = hgrn2_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0])
    torch.testing.assert_close(o0, hgrn2(q[:, :1], k[:, :1], v[:, :1], g[:, :1])[0][:, 0])


@pytest.mark.parametrize("T,fast", [(2, False), (130, True)])
def test_gradcheck_torch_backend(T, fast):
    q, k, v, g, h0 = make(1, T, 1, 2, 3, gmin=-2.0)
    g = g - 0.01  # finite differences must keep g <= 0
    ins = [x.requires_grad_() for x in (q, k, v, g, h0)]
    fn = lambda q, k, v, g, h0: hgrn2(q, k, v, g, None, h0, True, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, ins, fast_mode=fast)


def test_noncontiguous_inputs():
    q, k, v, g, h0 = make(2, 40, 3, 8, 6, dtype=torch.float32)
    qt, kt, gt = (x.transpose(0, 2).contiguous().transpose(0, 2) for x in (q, k, g))
    vt = v[..., ::2].contiguous()
    v2 = torch.cat([vt, vt], -1)[..., :3]
    assert not qt.is_contiguous() and not v2.is_contiguous()
    o, ht = hgrn2(qt, kt, v2, gt, initial_state=h0[..., :3].mT.contiguous().mT, output_final_state=True)
    o_ref, ht_ref = naive_hgrn2(q, k, v2, g, None, h0[..., :3], True)
    torch.testing.assert_close(o, o_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, ht_ref.float(), rtol=1e-5, atol=1e-5)


def test_triton_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, g, _ = make(1, 4, 1, 4, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="triton"):
        hgrn2(q, k, v, g, backend="triton")


def _bad(**over):
    q, k, v, g, h0 = make(1, 5, 2, 4, 3, dtype=torch.float32)
    kw = dict(q=q, k=k, v=v, g=g, initial_state=h0, backend="torch")
    kw.update(over)
    return kw


BAD = [
    (dict(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    (dict(q=torch.zeros(1, 5, 4)), ValueError, "q must be 4-D"),
    (dict(k=torch.zeros(1, 5, 2, 5)), ValueError, "k shape"),
    (dict(g=torch.zeros(1, 6, 2, 4)), ValueError, "g shape"),
    (dict(v=torch.zeros(1, 5, 3, 3)), ValueError, "v shape"),
    (dict(v=torch.zeros(1, 5, 2, 3, dtype=torch.float64)), TypeError, "v dtype"),
    (dict(q=torch.zeros(1, 5, 2, 4, dtype=torch.long)), TypeError, "q must be a floating-point"),
    (dict(g=torch.full((1, 5, 2, 4), 0.1)), ValueError, "g must be finite and <= 0"),
    (dict(g=torch.full((1, 5, 2, 4), float("-inf"))), ValueError, "g must be finite"),
    (dict(g=torch.full((1, 5, 2, 4), float("nan"))), ValueError, "g must be finite"),
    (dict(q=torch.zeros(1, 0, 2, 4), k=torch.zeros(1, 0, 2, 4), v=torch.zeros(1, 0, 2, 3),
          g=torch.zeros(1, 0, 2, 4)), ValueError, "empty time"),
    (dict(q=torch.zeros(0, 5, 2, 4), k=torch.zeros(0, 5, 2, 4), v=torch.zeros(0, 5, 2, 3),
          g=torch.zeros(0, 5, 2, 4), initial_state=None), ValueError, r"empty batch dimension \(B = 0\)"),
    (dict(q=torch.zeros(1, 5, 2, 0), k=torch.zeros(1, 5, 2, 0), g=torch.zeros(1, 5, 2, 0), initial_state=None),
     ValueError, r"empty key dimension \(K = 0\)"),
    (dict(initial_state=torch.zeros(1, 2, 4, 4)), ValueError, "initial_state shape"),
    (dict(initial_state=torch.zeros(1, 2, 4, 3, dtype=torch.int32)), TypeError,
     "initial_state must be a floating"),
    (dict(k=torch.zeros(1, 5, 2, 4, device="meta")), ValueError, "k is on meta"),
    (dict(backend="fast"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("over,exc,msg", BAD)
def test_bad_inputs(over, exc, msg):
    with pytest.raises(exc, match=msg):
        hgrn2(**_bad(**over))


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton", "fla", "auto"])
def test_empty_value_dim_same_on_every_backend(backend):
    """V = 0 is refused before dispatch, with one message whatever the backend."""
    with pytest.raises(ValueError, match=r"empty value dimension \(V = 0\)"):
        hgrn2(**_bad(v=torch.zeros(1, 5, 2, 0), initial_state=None, backend=backend))


def test_gpu_inputs_are_not_value_checked_without_debug(monkeypatch):
    """g's values (and GPU cu_seqlens) are checked only on CPU tensors, or every call under
    BABYLM_DS_DEBUG=1: meta tensors stand in for GPU ones (reading their values raises)."""
    q, k, v, g = (torch.zeros(1, 5, 2, d, device="meta") for d in (4, 4, 3, 4))
    cu = torch.tensor([0, 2, 5], device="meta")
    monkeypatch.delenv("BABYLM_DS_DEBUG", raising=False)
    api._check(q, k, v, g, None, False, cu)  # no value read, no sync
    monkeypatch.setenv("BABYLM_DS_DEBUG", "1")
    with pytest.raises((RuntimeError, NotImplementedError)):
        api._check(q, k, v, g, None, False, cu)


def test_bad_step_inputs():
    q, k, v, g, h0 = (x[:, 0] if x.dim() == 4 and x.shape[1] == 5 else x for x in make(1, 5, 2, 4, 3))
    with pytest.raises(ValueError, match="state shape"):
        hgrn2_step(q, k, v, g, h0[..., :2])
    with pytest.raises(ValueError, match="q must be 3-D"):
        hgrn2_step(q[None], k, v, g, h0)
    with pytest.raises(ValueError, match="g must be finite and <= 0"):
        hgrn2_step(q, k, v, -g + 1, h0)


def _fake_ext(monkeypatch, ok, reason):
    fake = types.ModuleType("babylm_ds.ops.hgrn2.ext")
    fake.ext_status = lambda device=None: (ok, reason)
    fake.hgrn2_ext = lambda *a: pytest.fail("unavailable ext called")
    monkeypatch.setitem(sys.modules, "babylm_ds.ops.hgrn2.ext", fake)
    monkeypatch.setattr(sys.modules["babylm_ds.ops.hgrn2"], "ext", fake, raising=False)
    monkeypatch.setattr(api, "_warned", set())


def test_auto_falls_back_with_one_warning(monkeypatch, caplog):
    _fake_ext(monkeypatch, False, "extension not built (test)")
    q, k, v, g, h0 = make(1, 70, 2, 4, 3, dtype=torch.float32)
    with caplog.at_level(logging.WARNING, logger=api.__name__):
        o1, _ = hgrn2(q, k, v, g, initial_state=h0)
        o2, _ = hgrn2(q, k, v, g, initial_state=h0, backend="auto")
    warns = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "extension not built (test)" in warns[0].getMessage()
    assert "'torch'" in warns[0].getMessage()
    ref, _ = naive_hgrn2(q, k, v, g, None, h0)
    torch.testing.assert_close(o1, ref.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(o1, o2)
    with pytest.raises(RuntimeError, match="'cpu' unavailable: extension not built"):
        hgrn2(q, k, v, g, backend="cpu")


def test_explicit_backend_wrong_device():
    q, k, v, g, _ = make(1, 4, 1, 4, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="'cuda' unavailable: .*needs cuda tensors"):
        hgrn2(q, k, v, g, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2),
                                        (torch.float16, 2e-2)])
@pytest.mark.parametrize("T,gmin", [(1, -1.0), (65, -20.0), (300, -1.0)])
def test_gpu_backends(backend, dtype, rtol, T, gmin):
    ins = make(2, T, 3, 64, 96, dtype=dtype, gmin=gmin, device="cuda")
    fn = lambda q, k, v, g, h0: hgrn2(q, k, v, g, None, h0, True, backend=backend)  # noqa: E731
    got = run_with_grads(fn, *ins)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert_close(got, oracle(*ins), rtol)


def test_extension_built_with_cuda_when_toolchain_present():
    """setup.py compiles the CUDA kernels whenever torch has CUDA and nvcc is found, so a CUDA build
    error fails the install instead of passing as a CPU-only extension."""
    from torch.utils.cpp_extension import CUDA_HOME

    _C = pytest.importorskip("babylm_ds._C")
    if os.environ.get("BABYLM_DS_CUDA") == "0" or torch.version.cuda is None or CUDA_HOME is None:
        pytest.skip("torch without CUDA or no nvcc: the extension is CPU-only by design")
    assert _C.has_cuda()


def test_chunk_length_is_one_constant_per_language():
    """Python: ops/hgrn2/chunk.py (the Triton backend takes it from there); C++/CUDA: csrc/hgrn2_common.h
    (the tiles take it from there). The two agree."""
    import re
    from pathlib import Path

    from babylm_ds.ops.hgrn2 import chunk

    root = Path(__file__).resolve().parents[1]
    header = (root / "csrc" / "hgrn2_common.h").read_text()
    assert re.findall(r"constexpr int kChunk = (\d+);", header) == [str(chunk.CHUNK)]
    assert re.findall(r"constexpr int kSub = (\d+);", header) == [str(chunk.SUB)]
    for path in [*(root / "csrc").glob("*.h"), *(root / "csrc").glob("*.c*")]:
        if path.name != "hgrn2_common.h":
            assert not re.search(r"constexpr int kChunk\s*=", path.read_text()), path.name
    for path in [*(root / "babylm_ds").rglob("*.py"), *(root / "benchmarks").glob("*.py")]:
        if path.name != "chunk.py":  # no other module writes the number down
            assert not re.search(r"^(CHUNK|BT|C)(, \w+)? = \d", path.read_text(), re.M), path.name

"""HGRN2 Triton backend on CPU: the kernels under TRITON_INTERPRET=1 vs the float64 oracle, and an
sm_90 compile (ptxas included) that catches what the interpreter cannot see."""
import contextlib
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys, torch
    from babylm_ds.ops import hgrn2
    from babylm_ds.ops.hgrn2 import api
    from tests.test_ops import make, run_with_grads, oracle, assert_close
    from tests.test_ops_varlen import packed, per_sequence_oracle, varlen_grads
    triton = lambda q, k, v, g, h0, **kw: hgrn2(q, k, v, g, 0.5, h0, True, backend="triton", **kw)
    # chunk 64, sub-chunk 16: lengths around both edges; g down to -20 per step; K > 64 (two K tiles)
    for T, gmin in [(1, -1.0), (15, -20.0), (16, -1.0), (17, -20.0), (63, -1.0), (64, -20.0), (65, -20.0)]:
        ins = make(1, T, 1, 8, 12, dtype=torch.float32, gmin=gmin)
        assert_close(run_with_grads(triton, *ins), oracle(*ins, scale=0.5), 2e-5)
        print("T", T, "ok", flush=True)
    ins = make(1, 70, 1, 70, 5, dtype=torch.float32, gmin=-3.0)
    assert_close(run_with_grads(triton, *ins), oracle(*ins, scale=0.5), 2e-5)
    ins = make(1, 65, 1, 8, 12, dtype=torch.bfloat16, gmin=-20.0)  # bf16 loads and stores
    got = run_with_grads(triton, *ins)
    assert [x.dtype for x in got] == [torch.bfloat16, torch.float32] + [torch.bfloat16] * 4 + [torch.float32]
    assert_close(got, oracle(*ins, scale=0.5), 2e-2)
    q, k, v, g, h0, cu = packed([1, 16, 65, 17], K=8, V=12, dtype=torch.float32)
    got = varlen_grads(lambda *a: triton(*a, cu_seqlens=cu), q, k, v, g, h0, cu)
    assert_close(got, per_sequence_oracle(q, k, v, g, h0, cu, 0.5), 2e-5)
    q, k, v, g = (x.requires_grad_() for x in make(1, 20, 1, 8, 8, dtype=torch.float32)[:4])
    o, ht = hgrn2(q, k, v, g, backend="triton")
    assert ht is None and o.shape == v.shape
    grads = torch.autograd.grad(o.pow(2).sum(), (q, k, v, g))
    ref = torch.autograd.grad(hgrn2(q, k, v, g, backend="torch")[0].pow(2).sum(), (q, k, v, g))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert api._selfcheck("triton", torch.device("cpu"), torch.float32, 2, 8, 12) == (True, "")
    print("TRITON_OK")
""")


def test_triton_interpreter_matches_oracle():
    """T in {1, 15, 16, 17, 63, 64, 65}, g down to -20, initial and final state with gradients,
    two K tiles, bf16 I/O, packed sequences (per-sequence oracle), no-state path, the auto
    self-check. (The bf16 tensor-core operands of a GPU run are not emulated: the interpreter's bf16
    dot is wrong, so it computes bf16 inputs with fp32 operands.)"""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0 and "TRITON_OK" in r.stdout, r.stdout[-1000:] + r.stderr[-3000:]


FP32 = {"gc", "h0", "hs", "ht", "A", "dA", "dhs", "dgk", "dq", "dk"}


def test_triton_kernels_compile_for_sm90():
    """Every kernel compiles to an sm_90 cubin at the BabyHGRN-360M head size (K = V = 128, bf16)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from babylm_ds.ops.hgrn2 import triton as kern

    q = torch.empty(1, 1, 2, 128, dtype=torch.bfloat16)
    kw, vw = kern._config(q, q)
    num_warps = kw.pop("num_warps")
    meta = {**kw, **vw, "BC": kern.BC, "REVERSE": True, "USE_H0": True, "STORE_HT": True}
    for fn in (kern._cumsum_kernel, kern._state_kernel, kern._intra_A_kernel, kern._fwd_o_kernel,
               kern._bwd_dv_kernel, kern._bwd_inter_kernel, kern._bwd_intra_kernel):
        consts = {n: v for n, v in meta.items() if n in fn.arg_names}
        sig = {n: "constexpr" if n in consts else "fp32" if n == "scale" else "i32" if n in ("N", "NT") else
               "*i32" if n in ("cu", "chunk_idx", "chunk_off") else "*fp32" if n in FP32 else "*bf16"
               for n in fn.arg_names}
        src = ASTSource(fn, sig, {(fn.arg_names.index(n),): v for n, v in consts.items()})
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))


FOLD = textwrap.dedent("""
    import torch
    from babylm_ds.ops.hgrn2 import triton as kern
    from tests.test_ops_varlen import packed, varlen_grads
    # N H = 9 sequence-heads and 6 chunks: with the limit at 4 both fold into x and both overhang
    q, k, v, g, h0, cu = packed([70, 5, 130], K=8, V=12, H=3, dtype=torch.float32, gmin=-3.0)
    fn = lambda *a: kern.triton_hgrn2(*a[:4], 0.5, a[4], True, cu_seqlens=cu)
    assert kern._grid(1, 6, 9) == (1, 6, 9)
    ref = varlen_grads(fn, q, k, v, g, h0, cu)
    kern.MAX_GRID_YZ = 4
    assert kern._grid(2, 6, 9) == (2 * 2 * 3, 4, 4)
    got = varlen_grads(fn, q, k, v, g, h0, cu)
    for name, a, b in zip(("o", "ht", "dq", "dk", "dv", "dg", "dh0"), got, ref):
        assert torch.equal(a, b), name
    print("FOLD_OK")
""")


def test_triton_grid_fold_matches_unfolded():
    """Grids past CUDA's y/z limit fold into x: with the limit lowered to 4 (chunks and sequence-heads
    both overhang), outputs, final states and gradients equal the unfolded launch's bit for bit."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", FOLD], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0 and "FOLD_OK" in r.stdout, r.stdout[-1000:] + r.stderr[-3000:]


def test_triton_launches_run_on_the_inputs_device(monkeypatch):
    """Every launch, forward and backward, happens inside the guard that makes the inputs' device current
    (recorded here instead of launching), and the guard of a cuda:1 tensor selects device 1."""
    pytest.importorskip("triton")
    from babylm_ds.ops.hgrn2 import triton as kern
    from tests.test_ops import make

    current, launches = [], []

    @contextlib.contextmanager
    def guard(x):
        current.append(x.device)
        yield
        current.pop()

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kw):
                devices = {a.device for a in args if isinstance(a, torch.Tensor)}
                launches.append((self.name, current[-1] if current else None, devices))
            return launch

    fake = types.SimpleNamespace(device=torch.device("cuda", 1))
    assert kern._device(fake).idx == 1  # torch.cuda.device(cuda:1), not entered here
    names = [n for n in vars(kern) if n.endswith("_kernel")]
    assert len(names) == 7
    for n in names:
        monkeypatch.setattr(kern, n, Recorder(n))
    monkeypatch.setattr(kern, "_device", guard)
    q, k, v, g, h0 = (x.requires_grad_() for x in make(1, 70, 2, 8, 12, dtype=torch.float32))
    o, ht = kern.triton_hgrn2(q, k, v, g, 0.5, h0, True)
    (o.sum() + ht.sum()).backward()
    assert {n for n, _, _ in launches} == set(names) and len(launches) == 4 + 7  # backward recomputes 3
    assert all(cur == q.device and devs == {q.device} for _, cur, devs in launches), launches


@pytest.mark.gpu
def test_gpu_triton_on_a_device_that_is_not_current():
    """cuda:1 inputs while cuda:0 is current: the launches follow the inputs (else an illegal address)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (inputs on cuda:1 while cuda:0 is current)")
    from babylm_ds.ops import hgrn2
    from tests.test_ops import assert_close, make, oracle, run_with_grads

    ins = make(2, 130, 2, 32, 48, dtype=torch.float32, gmin=-3.0, device="cuda:1")
    with torch.cuda.device(0):
        got = run_with_grads(lambda q, k, v, g, h0: hgrn2(q, k, v, g, None, h0, True, backend="triton"), *ins)
        torch.cuda.synchronize(1)
    assert got[0].device == torch.device("cuda", 1)
    assert_close(got, oracle(*ins), 1e-4)

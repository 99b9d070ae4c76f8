"""Compile check of the CUDA kernels without a GPU: nvcc for sm_80, sm_86 and sm_90 with `-Xptxas -v`;
fails on register spills, on shared memory (static + the dynamic bytes of the variant the launcher picks
there) over the architecture's per-block budget, or on kernels whose PTX has no tensor-core mma. Skipped
only when nvcc is absent. Intermediates and the ptxas log stay in build/nvcc_check, reused while newer
than the sources and made by the same command (one nvcc run for the three archs: about 5 min of CPU
time, measured). The shared-memory plan itself is checked for every arch without nvcc."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from babylm_ds.ops.hgrn2.ext import ext_status

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "nvcc_check"
# cudaDevAttrMaxSharedMemoryPerBlockOptin: A100 / A30; A10, A40, RTX 30 / L4, L40, RTX 40; H100 / H200
BUDGETS = {"80": 163 * 1024, "86": 99 * 1024, "89": 99 * 1024, "90": 227 * 1024}
ARCHS = {a: BUDGETS[a] for a in ("80", "86", "90")}  # compiled here (sm_89 runs sm_86's code)
MODES = {"0": "bf16", "1": "fp16", "2": "tf32x3"}  # ModeId in the kernels' template arguments
SOURCES = [ROOT / "csrc" / f for f in ("hgrn2_cuda.cu", "hgrn2_cuda.h", "hgrn2_kernels.h", "hgrn2_tile.h",
                                       "hgrn2_common.h")]


def nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0")
    path = Path(home) / "bin" / "nvcc"
    return str(path) if path.exists() else shutil.which("nvcc")


@pytest.fixture(scope="module")
def compiled():
    exe = nvcc()
    if exe is None:
        pytest.skip("nvcc not found (set CUDA_HOME)")
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-std=c++20", "-O3", "--threads", "2", "-Xptxas", "-v", "--keep", "--keep-dir", str(OUT),
           "-fatbin", "-o", str(OUT / "hgrn2_cuda.fatbin"), str(ROOT / "csrc" / "hgrn2_cuda.cu")]
    for a in ARCHS:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    log = OUT / "ptxas.log"
    head = " ".join(cmd) + "\n"
    if log.exists() and log.stat().st_mtime > max(p.stat().st_mtime for p in SOURCES):
        text = log.read_text()
        if text.startswith(head):
            return text
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(OUT)})
    assert r.returncode == 0, r.stderr[-4000:]
    log.write_text(head + r.stderr)
    return r.stderr


def entries(log):
    """{(arch, kernel, mode, lean): (static smem, spill stores, spill loads, registers)} from ptxas -v."""
    out = {}
    for block in log.split("Compiling entry function")[1:]:
        name, arch = re.match(r"\s*'(\S+)' for 'sm_(\d+)'", block).groups()
        kernel, mode, flags = re.search(r"k([123])_kernelILi(\d)E((?:Lb[01]E)*)", name).groups()
        flags = re.findall(r"Lb([01])E", flags)  # K1: REV, LEAN; K2: BWD; K3: LEAN
        lean = {"1": flags[1:], "2": [], "3": flags}[kernel] == ["1"]
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        smem = re.search(r"(\d+) bytes smem", block)
        regs = re.search(r"Used (\d+) registers", block)
        key = (arch, f"k{kernel}", MODES[mode], lean)
        prev = out.get(key, (0, 0, 0, 0))  # K1 and K2 have a forward and a reverse variant: keep the worst
        out[key] = tuple(max(a, b) for a, b in zip(prev, (int(smem.group(1)) if smem else 0, int(spill.group(1)),
                                                          int(spill.group(2)), int(regs.group(1))), strict=True))
    return out


def smem_plan(mode, budget):
    from babylm_ds import _C

    lean1, lean3, nbytes, err = _C.hgrn2_smem_plan(mode, budget)
    return {"k1": (lean1, nbytes[0]), "k2": (False, nbytes[1]), "k3": (lean3, nbytes[2])}, err


def test_shared_memory_plan_fits_every_arch():
    """The kernel variants the launcher picks from the device's opt-in shared memory fit sm_80, sm_86,
    sm_89 and sm_90 in every precision (the full ones on sm_80 / sm_90, lean fp32 K1 and K3 on sm_86 / 89);
    below that, a one-line error names the kernel and its bytes."""
    ok, reason = ext_status()
    if not ok:
        pytest.skip(reason)
    for arch, budget in BUDGETS.items():
        for mode in MODES.values():
            plan, err = smem_plan(mode, budget)
            assert err == "" and all(b <= budget for _, b in plan.values()), (arch, mode, plan)
            lean = {k for k, (is_lean, _) in plan.items() if is_lean}
            assert lean == ({"k1", "k3"} if mode == "tf32x3" and arch in ("86", "89") else set()), (arch, mode, plan)
    plan, err = smem_plan("tf32x3", 64 * 1024)
    assert err == f"hgrn2 cuda: kernel K1 (fp32, lean) needs {plan['k1'][1]} B of shared memory per block; " \
                  "this GPU allows 65536 B", err


def test_no_spills_and_shared_memory_fits(compiled):
    ok, reason = ext_status()
    if not ok:
        pytest.skip(reason)
    found = entries(compiled)
    assert len(found) == 3 * (3 * 3 + 2), sorted(found)  # 3 archs x (K1..K3 x 3 modes + lean fp32 K1, K3)
    for (arch, kernel, mode, lean), (_, st, ld, _) in found.items():
        assert st == 0 and ld == 0, f"sm_{arch} {kernel} {mode} lean={lean}: spills {st} B stores, {ld} B loads"
    for arch, budget in ARCHS.items():
        for mode in MODES.values():
            for kernel, (lean, dyn) in smem_plan(mode, budget)[0].items():
                smem = found[arch, kernel, mode, lean][0]
                assert smem + dyn <= budget, f"sm_{arch} {kernel} {mode} lean={lean}: {smem} + {dyn} B shared memory"


def test_ptx_uses_tensor_cores(compiled):
    ptx = sorted(OUT.glob("*.ptx"))
    assert {re.search(r"compute_(\d+)", p.name).group(1) for p in ptx} >= set(ARCHS), [p.name for p in ptx]
    for p in ptx:
        text = p.read_text()
        for op in ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                   "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                   "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", "cvt.rna.tf32.f32",
                   "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", "cp.async.cg.shared.global"):
            assert op in text, f"{p.name}: no {op}"
        kernels = text.split(".entry")[1:]
        assert len(kernels) == 18
        for body in kernels:
            assert "mma.sync.aligned" in body, f"{p.name}: a kernel without mma: {body[:120]}"

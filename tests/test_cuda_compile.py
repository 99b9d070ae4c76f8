"""Compile check of the CUDA kernels without a GPU: nvcc for sm_80 and sm_90 with `-Xptxas -v`; fails
on register spills, on shared memory (static + the kernels' dynamic bytes) over the architecture's
per-block budget, or on kernels whose PTX has no tensor-core mma. Skipped only when nvcc is absent.
Intermediates and the ptxas log stay in build/nvcc_check, reused while newer than the sources and made
by the same command (one nvcc run for both archs: 84-104 s of CPU time, measured)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from babylm_ds.ops.hgrn2.ext import ext_status

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "nvcc_check"
ARCHS = {"80": 163 * 1024, "90": 227 * 1024}  # opt-in shared memory per block (A100, H100/H200)
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
    """{(arch, kernel, mode): (static smem, spill stores, spill loads)} from ptxas -v."""
    out = {}
    for block in log.split("Compiling entry function")[1:]:
        name, arch = re.match(r"\s*'(\S+)' for 'sm_(\d+)'", block).groups()
        kernel, mode = re.search(r"k([123])_kernelILi(\d)", name).groups()
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        smem = re.search(r"(\d+) bytes smem", block)
        key = (arch, f"k{kernel}", MODES[mode])
        prev = out.get(key, (0, 0, 0))  # K1 and K2 have two variants each: keep the worst
        out[key] = tuple(max(a, b) for a, b in zip(prev, (int(smem.group(1)) if smem else 0,
                                                          int(spill.group(1)), int(spill.group(2)))))
    return out


def test_no_spills_and_shared_memory_fits(compiled):
    ok, reason = ext_status()
    if not ok:
        pytest.skip(reason)
    from babylm_ds import _C

    found = entries(compiled)
    assert len(found) == 2 * 3 * 3, sorted(found)  # 2 archs x K1..K3 x 3 modes
    for (arch, kernel, mode), (smem, st, ld) in found.items():
        assert st == 0 and ld == 0, f"sm_{arch} {kernel} {mode}: spills {st} B stores, {ld} B loads"
        dyn = _C.hgrn2_tile_smem(mode)[int(kernel[1]) - 1]
        assert smem + dyn <= ARCHS[arch], f"sm_{arch} {kernel} {mode}: {smem} + {dyn} B shared memory"


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
        assert len(kernels) == 15
        for body in kernels:
            assert "mma.sync.aligned" in body, f"{p.name}: a kernel without mma: {body[:120]}"

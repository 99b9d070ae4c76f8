"""The CPU kernels' instruction sets: the BABYLM_DS_CPU_ISA switch, the compiled inner loops of every
path (no vector register spills), and the portable path built for aarch64 and run under qemu.

The compile checks build tests/hgrn2_cpu_driver.cpp (csrc/hgrn2_cpu.cpp with a float64 per-step
reference, torch-free) with setup.py's flags, keeping the assembly (-save-temps) and the binary in
build/cpu_isa_check; they are reused while newer than the sources and made by the same command (x86:
about 100 s of CPU time, aarch64: about 40 s). The numerics of each path against the float64 oracle
are tests/test_ops_ext.py's, run once per instruction set."""
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from babylm_ds.ops.hgrn2.ext import _C, ext_status

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "cpu_isa_check"
DRIVER = ROOT / "tests" / "hgrn2_cpu_driver.cpp"
SOURCES = [DRIVER, *(ROOT / "csrc" / f for f in ("hgrn2_cpu.cpp", "hgrn2_cpu.h", "hgrn2_cpu_kernel.h",
                                                 "hgrn2_common.h"))]
FLAGS = ["-std=c++20", "-O3", "-fopenmp", "-fno-trapping-math"]  # setup.py's (plus -march=x86-64-v2 on x86)
X86 = platform.machine().lower() in ("x86_64", "amd64")
# Packed FMAs / multiplies; float-int conversions (the vectorised exp's loops, not the register tiles:
# those may keep a temporary or a polynomial constant on the stack); a vector register stored to a
# stack slot (a spill).
VEC_MATH = re.compile(r"^\s+(v?fn?madd\d*p[sd]|v?mulp[sd]|fmla|fmul)\s")
CONVERT = re.compile(r"^\s+(v?cvt\w+|fcvtz[su]|[su]cvtf)\s")
VEC_SPILL = re.compile(r"^\s+v?mov\w*\s+%[xyz]mm\d+,\s*-?\d*\((%rsp|%rbp)\)|^\s+(str|stp|stur)\s+q\d+,.*\[(sp|x29)")


def build(cxx, name, flags):
    """(binary, assembly text) of the driver built by `cxx`; None when `cxx` is not installed."""
    exe = shutil.which(cxx)
    if exe is None:
        return None
    OUT.mkdir(parents=True, exist_ok=True)
    binary, stamp = OUT / name, OUT / f"{name}.cmd"
    cmd = [exe, *FLAGS, *flags, f"-I{ROOT / 'csrc'}", "-save-temps=obj", str(DRIVER), "-o", str(binary)]
    asm = OUT / f"{name}-{DRIVER.stem}.s"
    fresh = stamp.exists() and binary.exists() and asm.exists() and stamp.read_text() == " ".join(cmd)
    if not fresh or binary.stat().st_mtime < max(p.stat().st_mtime for p in SOURCES):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=OUT)
        assert r.returncode == 0, r.stderr[-4000:]
        stamp.write_text(" ".join(cmd))
    return binary, asm.read_text()


def tile_loops(asm):
    """{namespace: [(instructions, spill stores)]} of the register tiles' inner loops per kernel namespace
    (hgrn2::avx512, avx2, base): the innermost loops (a backward branch to a label, no other such loop
    inside) with at least 4 packed FMAs / multiplies and no conversion."""
    out = {}
    for func in re.split(r"\n(?=_Z\S*:\n)", asm):
        ns = re.match(r"_ZNK?5hgrn2(\d+)", func)
        if ns is None:
            continue
        ns = func[len(ns.group(0)):][:int(ns.group(1))]
        lines = func.split(".cfi_endproc")[0].splitlines()
        labels = {line[:-1]: i for i, line in enumerate(lines) if re.match(r"^\.L\w+:$", line)}
        loops = [(labels[m.group(1)], i) for i, line in enumerate(lines)
                 if (m := re.match(r"^\s+(?:j\w+|b\.?\w*|cbn?z\s+\w+,|tbn?z\s+\w+,\s*#\d+,)\s*(\.L\w+)$", line))
                 and labels.get(m.group(1), i) < i]
        for a, b in loops:
            if any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops):
                continue
            body = [line for line in lines[a:b + 1] if line.startswith("\t") and not line.startswith("\t.")]
            if sum(bool(VEC_MATH.match(line)) for line in body) >= 4 and not any(CONVERT.match(x) for x in body):
                out.setdefault(ns, []).append((body, [line.strip() for line in body if VEC_SPILL.match(line)]))
    return out


def assert_no_spills(loops, namespaces):
    assert set(loops) >= set(namespaces), sorted(loops)
    for ns in namespaces:
        spilled = [s for _, s in loops[ns] if s]
        assert not spilled, f"{ns}: {len(spilled)} of {len(loops[ns])} tile loops spill vector registers: {spilled[:3]}"


def test_flags_are_setup_pys():
    setup = (ROOT / "setup.py").read_text()
    assert all(f'"{f}"' in setup for f in [*FLAGS[1:], "-march=x86-64-v2"]), FLAGS


@pytest.fixture(scope="module")
def native():
    if not X86:
        pytest.skip("the native build check is for x86-64 (its three instruction sets)")
    return build("g++", "x86_64", ["-march=x86-64-v2"])


def test_register_tiles_do_not_spill(native):
    """Every path's small-matmul inner loops keep their tiles in registers (avx512 compiled, not run, here)."""
    assert_no_spills(tile_loops(native[1]), ("avx512", "avx2", "base"))


def test_driver_reference_agrees_on_every_path(native):
    """The driver's float64 recurrence (the aarch64 check's reference) against each path run here."""
    r = subprocess.run([str(native[0]), "check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("\nok ") + r.stdout.startswith("ok ") == len(_C.cpu_isas()), r.stdout


def test_aarch64_build_and_run():
    """The portable path compiled for aarch64 (NEON): its register tiles do not spill; run under
    qemu-aarch64 against the float64 recurrence when qemu is installed."""
    built = build("aarch64-linux-gnu-g++", "aarch64", [])
    if built is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)")
    binary, asm = built
    assert_no_spills(tile_loops(asm), ("base",))
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.skip("compiled for aarch64; qemu-aarch64 not installed to run it (apt-get install qemu-user)")
    r = subprocess.run([qemu, "-L", "/usr/aarch64-linux-gnu", str(binary), "check"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok baseline"), r.stdout + r.stderr


ok, reason = ext_status()
ext = pytest.mark.skipif(not ok, reason=reason)


@ext
def test_switch_forces_each_path_and_refuses_bad_names():
    isas = _C.cpu_isas()
    assert isas[-1] == "baseline" and set(isas) <= {"avx512", "avx2", "baseline"}
    try:
        for isa in isas:
            _C.set_cpu_isa(isa)
            assert _C.cpu_isa() == isa
        _C.set_cpu_isa("auto")
        assert _C.cpu_isa() == isas[0]
        with pytest.raises(ValueError, match="unknown instruction set; use auto, avx512, avx2 or baseline"):
            _C.set_cpu_isa("avx3")
        for missing in {"avx512", "avx2"} - set(isas):
            with pytest.raises(ValueError, match=f"this CPU lacks {missing}"):
                _C.set_cpu_isa(missing)
    finally:
        _C.set_cpu_isa("")


def run_with_env(value):
    """(exit status, stdout, stderr) of a fresh interpreter that runs the cpu backend once with
    BABYLM_DS_CPU_ISA=value and prints the path it took."""
    code = ("import torch; from babylm_ds import _C; from babylm_ds.ops import hgrn2\n"
            "x = torch.randn(1, 70, 2, 8)\n"
            "hgrn2(x, x, x, -x.abs(), backend='cpu')\n"
            "print(_C.cpu_isa())")
    env = {**os.environ, "BABYLM_DS_CPU_ISA": value, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


@ext
def test_env_switch():
    """BABYLM_DS_CPU_ISA picks the path; a name this CPU cannot run fails the first kernel call with one
    line naming the variable and what the CPU runs."""
    isas = _C.cpu_isas()
    assert run_with_env("baseline")[:2] == (0, "baseline")
    rc, out, err = run_with_env("avx-512")
    assert rc != 0 and err.splitlines()[-1] == (
        "ValueError: BABYLM_DS_CPU_ISA=avx-512: unknown instruction set; use auto, avx512, avx2 or baseline "
        f"(this CPU runs {', '.join(isas)})")
    if "avx512" not in isas:
        rc, out, err = run_with_env("avx512")
        assert rc != 0 and err.splitlines()[-1].endswith(f"this CPU lacks avx512 (it runs {', '.join(isas)})")

"""HGRN2 kernel benchmark: forward and forward+backward time of every available backend vs T.

Backends: "cpu" (C++ extension; --cpu-isa names its instruction sets, each measured as backend
"cpu-ISA" when there are several) and "torch" (chunked PyTorch) on CPU; "cuda" (CUDA extension),
"triton", "torch" and fla's `chunk_gla` on a GPU; plus causal `scaled_dot_product_attention` with the
same head dims (q, k, v of width K, K, V) as the softmax-attention reference.

One shape (--B --H --K --V --dtype) over --T, or `--grid gpu`: the GPU grid of issue 10 (GPU_GRID:
bf16 B8 H16 K=V=64 at T 1024-16384, fp32 B2 H4 at T 8192, the BabyHGRN-360M heads bf16 B32 H8
K=V=128 at T 128 and 512), every shape measured in the same run as fla and SDPA, the ratios to them.

FLOP count (per batch*head, chunk C = 64, useful work of the chunked algorithm):
    forward          2 T (2 K V + C (K + V) / 2)   (inter-chunk q S and state update; intra-chunk
                                                    q k^T and A v on the causal half)
    forward+backward 3x the forward (the usual convention)
Achieved GFLOP/s are compared with this machine's square fp32 GEMM (torch.matmul, 2048^3).
Each (shape, T) is one case, timed as the best of --repeats (10) rounds after a warm-up; each round
calls the GEMM and every backend and pass of the case once in turn, so that a noisy stretch of a shared
machine hits them alike rather than the few measured while it lasts, and the minimum is the least
disturbed call (the GEMM rate reported is the best over the cases).

A backend that fails in a case (a Triton CompilationError or OutOfResources, a launch error, memory)
gets a row with its `error` and the run goes on. Prints a table (speed vs torch-chunked, fla and SDPA,
% of GEMM), on CPU the README's table rows (markdown, one row group per instruction set), PASS/FAIL for
the targets, and writes JSON (machine, versions, git commit, results with each CPU row's instruction
set) after every case, atomically, so a run stopped by a time limit keeps what it measured; at the end,
a log-log PNG of time vs T per shape.
"""
import argparse
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from babylm_ds.ops import hgrn2  # noqa: E402
from babylm_ds.ops.hgrn2.chunk import CHUNK  # noqa: E402
from babylm_ds.ops.hgrn2.ext import _C  # noqa: E402
from babylm_ds.utils.io import atomic_path, atomic_write_json  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GPU_GRID = [  # issue 10: (dtype, B, H, K, V, Ts)
    ("bfloat16", 8, 16, 64, 64, (1024, 4096, 16384)),
    ("float32", 2, 4, 64, 64, (8192,)),
    ("bfloat16", 32, 8, 128, 128, (128, 512)),  # BabyHGRN-360M heads
]


def hgrn2_flops(B, H, T, K, V, backward):
    fwd = 2 * B * H * T * (2 * K * V + CHUNK * (K + V) / 2)
    return 3 * fwd if backward else fwd


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def error_text(e):
    """One line naming an exception (compilation, resources, launch, memory) for a JSON row."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def best_times(groups, device, repeats):
    """({name: [seconds of each fn]}, {name: error}) for groups {name: [fn, ...]}: the best of `repeats`
    rounds that call every fn once in turn, after one warm-up call each. A group whose call raises leaves
    the rounds with its error; the others go on."""
    best, errors = {name: [float("inf")] * len(fns) for name, fns in groups.items()}, {}

    def call(name, i, fn):
        try:
            t = time.perf_counter()
            fn()
            sync(device)
            best[name][i] = min(best[name][i], time.perf_counter() - t)
        except Exception as e:  # a backend's own failure: recorded, the run goes on
            errors[name] = error_text(e)
            best.pop(name)

    for round_ in range(1 + repeats):
        for name, fns in groups.items():
            for i, fn in enumerate(fns):
                if name in best:
                    call(name, i, fn)
        if round_ == 0:  # the warm-up call is not timed
            best = {name: [float("inf")] * len(t) for name, t in best.items()}
    return best, errors


def cpu_isas(names):
    """The CPU kernels' instruction sets to measure: `names` ("all": every one this CPU runs), or the one
    they run with (BABYLM_DS_CPU_ISA's or the best); [] without the extension."""
    if _C is None:
        return []
    try:
        active = _C.cpu_isa()  # raises on a bad BABYLM_DS_CPU_ISA
    except ValueError as e:
        raise SystemExit(str(e)) from None
    here = _C.cpu_isas()
    if missing := sorted(set(names or ()) - set(here) - {"all"}):
        raise SystemExit(f"--cpu-isa {missing[0]}: this CPU runs only {', '.join(here)}")
    return here if names == ["all"] else list(dict.fromkeys(names or [active]))


def cpu_backends(isas):
    """{backend name: instruction set} of the cpu backend's runs ("cpu-ISA" when there are several)."""
    return {(f"cpu-{isa}" if len(isas) > 1 else "cpu"): isa for isa in isas}


def backends(device, isas=()):
    """name -> fn(q, k, v, g) returning the output; only those that run here. The cpu backend runs with
    each of `isas` (named "cpu-ISA" when there are several)."""
    out = {}
    for name in (("cpu", "torch") if device.type == "cpu" else ("cuda", "triton", "torch")):
        x = torch.zeros(1, 4, 1, 8, device=device)
        try:
            hgrn2(x, x, x, -x.abs(), backend=name)
        except Exception as e:  # unavailable, or failing to compile or launch here
            print(f"skip backend {name}: {error_text(e)}")
            continue
        if name == "cpu":  # forward and backward with `isa`: it stays set until the next call
            for cpu, isa in cpu_backends(isas).items():
                out[cpu] = lambda q, k, v, g, isa=isa: (
                    _C.set_cpu_isa(isa), hgrn2(q, k, v, g, backend="cpu"))[1][0]
            continue
        out[name] = lambda q, k, v, g, name=name: hgrn2(q, k, v, g, backend=name)[0]
    if device.type == "cuda":
        try:
            from fla.ops.gla import chunk_gla

            out["fla"] = lambda q, k, v, g: chunk_gla(q, k, v, g)[0]
        except Exception as e:
            print(f"skip fla: {error_text(e)}")

    def sdpa(q, k, v, g):
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                             v.transpose(1, 2), is_causal=True)
        return o.transpose(1, 2)

    out["sdpa"] = sdpa
    return out


def passes(fn, inputs):
    """(forward, forward+backward) calls of fn on inputs = (q, k, v, g, do), q..g leaves."""
    *leaves, do = inputs

    def fwd():
        with torch.no_grad():
            fn(*leaves)

    def step():  # grads assigned, not accumulated, as after optimizer.zero_grad()
        for x in leaves:
            x.grad = None
        fn(*leaves).backward(do)

    return fwd, step


def make_inputs(B, T, H, K, V, dtype, device):
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, T, H, K, generator=gen).to(device, dtype) for _ in range(2))
    v, do = (torch.randn(B, T, H, V, generator=gen).to(device, dtype) for _ in range(2))
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=gen)).to(device, dtype)
    return [x.requires_grad_() for x in (q, k, v, g)] + [do]


def git_commit():
    """HEAD of this checkout, or $GIT_COMMIT where the tree was copied without .git (a GPU host)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GIT_COMMIT")


def check_targets(rows, gemm, device):
    """PASS/FAIL of the targets (None when a needed point was not measured): on CPU issue 21's, for each
    instruction set of the cpu backend: fwd+bwd >= 35% of the GEMM rate at T=2048 (AVX-512: 40%, where
    it measured 44-48%), >= 3x torch-chunked at T=2048, faster than SDPA at every T >= 2048,
    t(8192)/t(1024) <= 9; or on a GPU issue 10's: cuda <= 1.0x and triton <= 1.5x fla's fwd+bwd time
    at every point, and the op (our fastest backend) <= SDPA at T >= 2048 (bf16, B*H = 128)."""
    t = {(r["shape"], r["backend"], r["T"]): r["fwd_bwd_s"] for r in rows if r["fwd_bwd_s"] is not None}

    def ratio(a, b):
        return t[a] / t[b] if a in t and b in t else None

    checks = {}
    if device.type == "cpu":
        shape = rows[0]["shape"]
        p = lambda name, T: (shape, name, T)  # noqa: E731
        for cpu, isa in {r["backend"]: r.get("isa") for r in rows if r["backend"].startswith("cpu")}.items():
            gf = {r["T"]: r["fwd_bwd_gflops"] for r in rows if r["backend"] == cpu}
            share = 0.4 if isa == "avx512" else 0.35
            checks.update({
                f"{cpu} fwd+bwd >= {share:.0%} of GEMM GFLOP/s at T=2048": (
                    gf[2048] / gemm if 2048 in gf else None, share, ">="),
                f"{cpu} fwd+bwd >= 3x torch-chunked at T=2048": (ratio(p("torch", 2048), p(cpu, 2048)), 3.0, ">="),
                f"{cpu} t(8192)/t(1024) <= 9": (ratio(p(cpu, 8192), p(cpu, 1024)), 9.0, "<="),
                **{f"{cpu} fwd+bwd faster than SDPA at T={T}": (ratio(p("sdpa", T), p(cpu, T)), 1.0, ">")
                   for T in sorted(gf) if T >= 2048},
            })
    else:
        for r in rows:
            if r["backend"] != "sdpa":
                continue
            shape, T = r["shape"], r["T"]
            for name, bound in (("cuda", 1.0), ("triton", 1.5)):
                checks[f"{name} fwd+bwd <= {bound}x fla: {shape} T={T}"] = (
                    ratio((shape, name, T), (shape, "fla", T)), bound, "<=")
            if r["dtype"] == "bfloat16" and r["B"] * r["H"] == 128 and T >= 2048:
                ours = [t[k] for k in t if k[0] == shape and k[2] == T and k[1] in ("cuda", "triton", "torch")]
                checks[f"op fwd+bwd <= SDPA: {shape} T={T}"] = (min(ours) / t[(shape, "sdpa", T)] if ours else None,
                                                               1.0, "<=")
    out = {}
    for name, (value, bound, op) in checks.items():
        ok = None if value is None else {">=": value >= bound, ">": value > bound, "<=": value <= bound}[op]
        out[name] = {"value": value, "bound": bound, "pass": ok}
        status = "N/A " if ok is None else ("PASS" if ok else "FAIL")
        print(f"{status} {name}" + ("" if value is None else f" (measured {value:.2f})"))
    return out


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        sub = [r for r in rows if r["shape"] == shape]
        for name in dict.fromkeys(r["backend"] for r in sub):
            pts = [(r["T"], r["fwd_bwd_s"] * 1e3) for r in sub if r["backend"] == name and r["fwd_bwd_s"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="T", ylabel="forward+backward time (ms)", title=shape)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def versions():
    """torch/CUDA and the installed triton, fla and deepspeed versions (read without importing them)."""
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for dist in ("triton", "flash-linear-attention", "deepspeed"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def measure(shapes, fns, device, repeats, on_case=None):
    """(rows, GEMM GFLOP/s). Each (shape, T) is one case: its backends and the GEMM timed in the same
    rounds. A backend that fails (compilation, resources, launch, memory) gets a row with its `error`;
    `on_case(rows, gemm)` is called after every case, so a run stopped midway keeps what it measured."""
    n = 2048
    x, y = (torch.randn(n, n, device=device) for _ in range(2))
    rows, gemm = [], 0.0
    for dtype, B, H, K, V, Ts in shapes:
        for T in Ts:
            case = dict(shape=f"{dtype} B{B} H{H} K{K} V{V}", dtype=dtype, B=B, H=H, K=K, V=V, T=T)
            try:
                groups = {"gemm": [lambda: x @ y]}
                inputs = make_inputs(B, T, H, K, V, DTYPES[dtype], device)
                groups.update({name: passes(fn, inputs) for name, fn in fns.items()})
                times, errors = best_times(groups, device, repeats)
            except Exception as e:  # the inputs themselves (memory)
                times, errors = {}, dict.fromkeys(["gemm", *fns], error_text(e))
            inputs = groups = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if "gemm" in times:
                gemm = max(gemm, 2 * n**3 / times["gemm"][0] / 1e9)
            for name in fns:
                if name in errors:
                    rows.append({**case, "backend": name, "error": errors[name], "fwd_s": None, "fwd_bwd_s": None,
                                 "fwd_gflops": None, "fwd_bwd_gflops": None})
                    print(f"{case['shape']} T={T} {name}: {errors[name]}")
                    continue
                t_fwd, t_fb = times[name]
                flops = [None if name == "sdpa" else hgrn2_flops(B, H, T, K, V, bwd) / t / 1e9
                         for bwd, t in ((False, t_fwd), (True, t_fb))]
                rows.append({**case, "backend": name, "fwd_s": t_fwd, "fwd_bwd_s": t_fb, "fwd_gflops": flops[0],
                             "fwd_bwd_gflops": flops[1]})
            if on_case:
                on_case(rows, gemm)
    return rows, gemm


def print_table(rows, gemm):
    t = {(r["shape"], r["backend"], r["T"]): r["fwd_bwd_s"] for r in rows if r["fwd_bwd_s"] is not None}
    nan = float("nan")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        print(f"\n{shape}\n{'T':>6} {'backend':>12} {'fwd ms':>9} {'fwd+bwd ms':>11} {'/torch':>7} {'/fla':>7} "
              f"{'/sdpa':>7} {'GFLOP/s':>8} {'% GEMM':>7}")
        for r in (r for r in rows if r["shape"] == shape):
            if r["fwd_bwd_s"] is None:
                print(f"{r['T']:>6} {r['backend']:>12} {r['error']}")
                continue
            ratios = [r["fwd_bwd_s"] / t.get((shape, ref, r["T"]), nan) for ref in ("torch", "fla", "sdpa")]
            gf = r["fwd_bwd_gflops"]
            print(f"{r['T']:>6} {r['backend']:>12} {r['fwd_s'] * 1e3:>9.2f} {r['fwd_bwd_s'] * 1e3:>11.2f} "
                  + " ".join(f"{x:>6.2f}x" for x in ratios)
                  + (f" {gf:>8.1f} {100 * gf / gemm:>6.1f}%" if gf else ""))
    print("(/torch, /fla, /sdpa: fwd+bwd time over that backend's in the same run, < 1 = faster; "
          "GFLOP/s of fwd+bwd)\n")


def print_readme_rows(rows, gemm):
    """The README's CPU table rows (markdown), one row group per instruction set of the cpu backend."""
    t = {(r["backend"], r["T"]): r for r in rows}
    print("| path | T | cpu fwd ms | cpu fwd+bwd ms | torch-chunked fwd+bwd | SDPA fwd+bwd | cpu vs torch "
          "| cpu vs SDPA | cpu % of GEMM |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["backend"].startswith("cpu"):
            fb, torch_fb, sdpa_fb = (t[(b, r["T"])]["fwd_bwd_s"] for b in (r["backend"], "torch", "sdpa"))
            print(f"| {r['isa']} | {r['T']} | {r['fwd_s'] * 1e3:.2f} | {fb * 1e3:.2f} | {torch_fb * 1e3:.1f} | "
                  f"{sdpa_fb * 1e3:.1f} | {torch_fb / fb:.1f}× | {sdpa_fb / fb:.1f}× | "
                  f"{100 * r['fwd_bwd_gflops'] / gemm:.0f}% |")
    print()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", choices=["gpu"], default=None, help="issue 10's GPU grid instead of one shape")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--V", type=int, default=64)
    p.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="JSON path (PNG beside it)")
    p.add_argument("--cpu-isa", nargs="+", choices=["avx512", "avx2", "baseline", "all"], default=None,
                   help="instruction sets of the cpu backend to measure (all: every one this CPU runs; "
                        "default: the one it runs with, BABYLM_DS_CPU_ISA's or the best)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if a.grid and device.type != "cuda":
        raise SystemExit("--grid gpu: needs --device cuda")
    if min(a.B, a.H, a.K, a.V, a.repeats, *a.T) < 1:
        raise SystemExit("--B, --H, --K, --V, --T and --repeats must be positive")
    if device.type == "cpu" and a.dtype != "float32":
        raise SystemExit("--dtype: the CPU kernels compute in float32; use --dtype float32 on cpu")
    shapes = GPU_GRID if a.grid else [(a.dtype, a.B, a.H, a.K, a.V, tuple(a.T))]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    isas = cpu_isas(a.cpu_isa) if device.type == "cpu" else []
    tag = "_".join(["cpu", *isas]) if gpu is None else re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_").lower()
    out = a.out or ROOT / "benchmarks" / "results" / f"kernels_{tag}{'_grid' if a.grid else ''}.json"

    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "gpu": gpu,
                    "cpu_count": torch.get_num_threads(), "python": platform.python_version(), **versions(),
                    "cpu_isas": cpu_isas(["all"])},
        "git_commit": git_commit(),
        "flops": "forward 2*B*H*T*(2*K*V + 64*(K+V)/2); forward+backward 3x forward",
    }

    isa_of = cpu_backends(isas)

    def write(rows, gemm, targets=None):  # after every case: a run stopped midway keeps what it measured
        for r in rows:  # the instruction set each cpu row ran with
            r["isa"] = isa_of.get(r["backend"])
        atomic_write_json(out, {**result, "gemm_gflops": gemm, "results": rows, "targets": targets or {}})

    rows, gemm = measure(shapes, backends(device, isas), device, a.repeats, write)
    if isas:
        _C.set_cpu_isa("")  # back to BABYLM_DS_CPU_ISA's or the best
    print(f"device {gpu or platform.processor() or 'cpu'}, threads {torch.get_num_threads()}, "
          f"fp32 GEMM {gemm:.1f} GFLOP/s" + (f", cpu kernels: {', '.join(isas)}" if isas else ""))
    print_table(rows, gemm)
    if isas:
        print_readme_rows(rows, gemm)
    targets = check_targets(rows, gemm, device)
    write(rows, gemm, targets)
    result.update(gemm_gflops=gemm, results=rows, targets=targets)
    title = f"HGRN2 on {gpu or 'cpu'}" + ("" if a.grid else f" ({shapes[0][0]})")
    plot(rows, out.with_suffix(".png"), title)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()

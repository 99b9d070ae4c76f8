"""HGRN2 kernel benchmark: forward and forward+backward time of every available backend vs T.

Backends: "cpu" (C++ extension) and "torch" (chunked PyTorch) on CPU; "cuda" (CUDA extension),
"triton", "torch" and fla's `chunk_gla` on a GPU; plus causal `scaled_dot_product_attention` with the
same head dims (q, k, v of width K, K, V) as the softmax-attention reference.

FLOP count (per batch*head, chunk C = 64, useful work of the chunked algorithm):
    forward          2 T (2 K V + C (K + V) / 2)   (inter-chunk q S and state update; intra-chunk
                                                    q k^T and A v on the causal half)
    forward+backward 3x the forward (the usual convention)
Achieved GFLOP/s are compared with this machine's square fp32 GEMM (torch.matmul, 2048^3).
Times are the best of --repeats (10) rounds after a warm-up; each round calls every configuration
(GEMM, each T, backend and pass) once in turn, so that a noisy stretch of a shared machine hits them
alike rather than the few measured while it lasts, and the minimum is the least disturbed call.

Prints a table (speed vs torch-chunked and vs SDPA, % of GEMM), PASS/FAIL for the CPU targets,
and writes JSON (machine, torch, git commit, results) and a log-log PNG of time vs T.
"""
import argparse
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
from babylm_ds.utils.io import atomic_path, atomic_write_json  # noqa: E402

CHUNK = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hgrn2_flops(B, H, T, K, V, backward):
    fwd = 2 * B * H * T * (2 * K * V + CHUNK * (K + V) / 2)
    return 3 * fwd if backward else fwd


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_times(fns, device, repeats):
    """Seconds of each fn: the best of `repeats` rounds that call every fn once in turn, after one
    warm-up call each."""
    for fn in fns:
        fn()
    sync(device)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def backends(device):
    """name -> fn(q, k, v, g) returning the output; only those that run here."""
    out = {}
    for name in (("cpu", "torch") if device.type == "cpu" else ("cuda", "triton", "torch")):
        x = torch.zeros(1, 4, 1, 8, device=device)
        try:
            hgrn2(x, x, x, -x.abs(), backend=name)
        except (RuntimeError, ImportError) as e:
            print(f"skip backend {name}: {e}")
            continue
        out[name] = lambda q, k, v, g, name=name: hgrn2(q, k, v, g, backend=name)[0]
    if device.type == "cuda":
        try:
            from fla.ops.gla import chunk_gla

            out["fla"] = lambda q, k, v, g: chunk_gla(q, k, v, g)[0]
        except ImportError as e:
            print(f"skip fla: {e}")

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
    """PASS/FAIL of the CPU targets (None when a needed T was not measured)."""
    if device.type != "cpu":
        return {}
    t = {(r["backend"], r["T"]): r["fwd_bwd_s"] for r in rows}
    gf = {r["T"]: r["fwd_bwd_gflops"] for r in rows if r["backend"] == "cpu"}

    def ratio(a, b):
        return t[a] / t[b] if a in t and b in t else None

    checks = {
        "cpu fwd+bwd >= 2x torch-chunked at T=2048": (ratio(("torch", 2048), ("cpu", 2048)), 2.0, ">="),
        "cpu fwd+bwd >= 40% of GEMM GFLOP/s at T=2048": (gf[2048] / gemm if 2048 in gf else None, 0.4, ">="),
        "cpu t(8192)/t(1024) <= 9": (ratio(("cpu", 8192), ("cpu", 1024)), 9.0, "<="),
        "cpu fwd+bwd >= 3x faster than SDPA at T=4096": (ratio(("sdpa", 4096), ("cpu", 4096)), 3.0, ">="),
    }
    out = {}
    for name, (value, bound, op) in checks.items():
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[name] = {"value": value, "bound": bound, "pass": ok}
        status = "N/A " if ok is None else ("PASS" if ok else "FAIL")
        print(f"{status} {name}" + ("" if value is None else f" (measured {value:.2f})"))
    return out


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in dict.fromkeys(r["backend"] for r in rows):
        pts = [(r["T"], r["fwd_bwd_s"] * 1e3) for r in rows if r["backend"] == name]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="T", ylabel="forward+backward time (ms)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--V", type=int, default=64)
    p.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="JSON path (PNG beside it)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if min(a.B, a.H, a.K, a.V, a.repeats, *a.T) < 1:
        raise SystemExit("--B, --H, --K, --V, --T and --repeats must be positive")
    dtype = DTYPES[a.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        raise SystemExit("--dtype: the CPU kernels compute in float32; use --dtype float32 on cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    tag = "cpu" if gpu is None else re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_").lower()
    out = a.out or ROOT / "benchmarks" / "results" / f"kernels_{tag}.json"

    fns = backends(device)
    n = 2048
    x, y = (torch.randn(n, n, device=device) for _ in range(2))
    configs, calls = [], [lambda: x @ y]
    for T in a.T:
        inputs = make_inputs(a.B, T, a.H, a.K, a.V, dtype, device)
        for name, fn in fns.items():
            configs.append((T, name))
            calls += passes(fn, inputs)
    times = best_times(calls, device, a.repeats)
    gemm = 2 * n**3 / times[0] / 1e9
    print(f"device {gpu or platform.processor() or 'cpu'}, threads {torch.get_num_threads()}, "
          f"fp32 GEMM {gemm:.1f} GFLOP/s")
    rows = []
    for i, (T, name) in enumerate(configs):
        t_fwd, t_fb = times[1 + 2 * i], times[2 + 2 * i]
        rows.append({"backend": name, "T": T, "fwd_s": t_fwd, "fwd_bwd_s": t_fb,
                     "fwd_gflops": None if name == "sdpa" else hgrn2_flops(a.B, a.H, T, a.K, a.V, False) / t_fwd / 1e9,
                     "fwd_bwd_gflops": None if name == "sdpa" else hgrn2_flops(a.B, a.H, T, a.K, a.V, True) / t_fb / 1e9})

    t = {(r["backend"], r["T"]): r["fwd_bwd_s"] for r in rows}
    print(f"\n{'T':>6} {'backend':>8} {'fwd ms':>9} {'fwd+bwd ms':>11} {'vs torch':>9} {'vs sdpa':>8} "
          f"{'GFLOP/s':>8} {'% GEMM':>7}")
    for r in rows:
        vs_torch = t.get(("torch", r["T"]), float("nan")) / r["fwd_bwd_s"]
        vs_sdpa = t[("sdpa", r["T"])] / r["fwd_bwd_s"]
        gf = r["fwd_bwd_gflops"]
        print(f"{r['T']:>6} {r['backend']:>8} {r['fwd_s'] * 1e3:>9.2f} {r['fwd_bwd_s'] * 1e3:>11.2f} "
              f"{vs_torch:>8.2f}x {vs_sdpa:>7.2f}x " + (f"{gf:>8.1f} {100 * gf / gemm:>6.1f}%" if gf else ""))
    print("(vs torch / vs sdpa: speed-up in forward+backward time; GFLOP/s of forward+backward)\n")
    targets = check_targets(rows, gemm, device)

    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "gpu": gpu,
                    "cpu_count": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.version.cuda},
        "git_commit": git_commit(),
        "flops": "forward 2*B*H*T*(2*K*V + 64*(K+V)/2); forward+backward 3x forward",
        "gemm_gflops": gemm,
        "results": rows,
        "targets": targets,
    }
    atomic_write_json(out, result)
    plot(rows, out.with_suffix(".png"), f"HGRN2 B{a.B} H{a.H} K{a.K} V{a.V} {a.dtype} on {gpu or 'cpu'}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()

"""The kernel benchmark runs end to end on a tiny grid and writes its JSON and plot."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_kernel_benchmark_tiny_grid(tmp_path):
    spec = importlib.util.spec_from_file_location("kernels_bench", ROOT / "benchmarks" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "k.json"
    bench.main(["--B", "1", "--H", "2", "--K", "16", "--V", "8", "--T", "64", "100", "--repeats", "2",
                "--device", "cpu", "--out", str(out)])
    res = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0 and res["gemm_gflops"] > 0
    got = {(r["backend"], r["T"]) for r in res["results"]}
    assert {("cpu", 64), ("torch", 100), ("sdpa", 100)} <= got and len(got) == 6
    assert all(0 < r["fwd_s"] < 10 and 0 < r["fwd_bwd_s"] < 10 for r in res["results"])
    assert all(v["pass"] is None for v in res["targets"].values())  # no T = 2048 / 4096 measured


def test_gpu_targets_from_rows():
    """Issue 10's GPU targets are judged from the rows of one run: ratios to fla and SDPA."""
    spec = importlib.util.spec_from_file_location("kernels_bench", ROOT / "benchmarks" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shape = dict(shape="bfloat16 B8 H16 K64 V64", dtype="bfloat16", B=8, H=16, T=4096)
    ms = {"cuda": 3.0, "triton": 5.5, "torch": 40.0, "fla": 3.3, "sdpa": 2.5}
    rows = [{**shape, "backend": b, "fwd_bwd_s": t / 1e3} for b, t in ms.items()]
    got = bench.check_targets(rows, 1.0, bench.torch.device("cuda"))
    cases = {k.split(":")[0]: (v["pass"], round(v["value"], 3)) for k, v in got.items()}
    assert cases == {"cuda fwd+bwd <= 1.0x fla": (True, 0.909), "triton fwd+bwd <= 1.5x fla": (False, 1.667),
                     "op fwd+bwd <= SDPA": (False, 1.2)}


def test_kernel_benchmark_records_failures_and_keeps_finished_cases(tmp_path, monkeypatch):
    """A backend failing with a non-RuntimeError (as Triton's CompilationError) gets a row with the error
    while the others are measured; the JSON is on disk after every case, so a run stopped during the
    second case keeps the first."""
    spec = importlib.util.spec_from_file_location("kernels_bench", ROOT / "benchmarks" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class CompilationError(Exception):
        pass

    def broken(q, k, v, g):
        raise CompilationError("at 12:4: out of resources: shared memory\nmore")

    real_backends, real_inputs = bench.backends, bench.make_inputs
    monkeypatch.setattr(bench, "backends", lambda device, isas=(): {**real_backends(device, isas), "triton": broken})

    def inputs(B, T, *rest):
        if T == 100:
            raise KeyboardInterrupt  # as the step's time limit stopping the run in its second case
        return real_inputs(B, T, *rest)

    monkeypatch.setattr(bench, "make_inputs", inputs)
    out = tmp_path / "k.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--B", "1", "--H", "2", "--K", "16", "--V", "8", "--T", "64", "100", "--repeats", "2",
                    "--device", "cpu", "--out", str(out)])
    res = json.loads(out.read_text())
    rows = {r["backend"]: r for r in res["results"]}
    assert {r["T"] for r in res["results"]} == {64} and set(rows) == {"cpu", "torch", "triton", "sdpa"}
    assert rows["triton"]["error"] == "CompilationError: at 12:4: out of resources: shared memory"
    assert rows["triton"]["fwd_bwd_s"] is None and "error" not in rows["cpu"]
    assert all(0 < rows[b]["fwd_bwd_s"] < 10 for b in ("cpu", "torch", "sdpa")) and res["gemm_gflops"] > 0

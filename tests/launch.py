"""Shared by the tests that run the launchers in subprocesses (test_training, test_distill)."""
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# CPU DeepSpeed, no hub, one OpenMP thread per rank, the project's compiled-op cache
LAUNCH_ENV = {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
              "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))}


def read_metrics(out, key):
    """{step: value} of `key` in OUT/metrics.jsonl."""
    rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    return {r["step"]: r[key] for r in rows if key in r}
# Subprocess timeouts guard against hangs only; they must never judge speed (a busy CI machine is slow).
HANG_S = 3600

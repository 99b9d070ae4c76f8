"""Smoke run of the end-to-end job (`launchers/pipeline.py`, the study of studies/demo.yaml) on a tiny budget:
every stage's output exists and verifies, and a second run skips everything (resumable)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import HANG_S, ROOT

PIPELINE = [sys.executable, str(ROOT / "launchers" / "pipeline.py")]
TINY = ["--max-words", "20000", "--vocab-size", "500", "--seq-len", "64", "--steps", "3", "--teacher-steps", "3",
        "--micro-batch", "4", "--teachers", "llama-tiny", "gpt2-tiny", "--k", "8", "--eval-limit", "1",
        "--eval-tasks", "blimp,supplement,ewok,bear_lite", "--bear-limit", "1", "--finetune-tasks", "wsc"]


def _run(argv, log, timeout=HANG_S):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as f:
        proc = subprocess.run([*PIPELINE, *argv], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              timeout=timeout)
    return proc.returncode, Path(log).read_text()


@pytest.mark.slow
def test_pipeline_end_to_end_and_resume(tmp_path):
    out = tmp_path / "demo"
    rc, log = _run(["--out", str(out), *TINY], tmp_path / "run1.log")
    assert rc == 0, log[-4000:]
    assert (out / "data" / "meta.json").is_file() and (out / "data" / "tokenizer" / "tokenizer.json").is_file()
    runs = ["teacher-llama-tiny-lr0.003-s0", "teacher-gpt2-tiny-lr0.003-s0", "student-lr0.003-s0", "student-kd-s0"]
    for run in runs:
        assert json.loads((out / "runs" / run / "summary.json").read_text())["steps"] == 3
        assert (out / "runs" / run / "final" / "manifest.json").is_file()
        assert (out / "runs" / run / "config.yaml").is_file()
    assert (out / "cache" / "student-kd-s0" / "manifest.json").is_file()
    # the terminal shows stages and results, not DeepSpeed's launcher lines; those stay in the stage logs
    assert "Unable to find hostfile" not in log and "] [INFO] [" not in log
    assert "Unable to find hostfile" in (out / "logs" / "teacher-llama-tiny-lr0.003-s0.log").read_text()
    # the distilled student: self-contained (auto_map), its card names the teachers and the eval's scores
    final = out / "runs" / "student-kd-s0" / "final"
    assert json.loads((final / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"].startswith("modeling_")
    card = (final / "README.md").read_text()
    assert "teacher-llama-tiny-lr0.003-s0/final (llama" in card and "| blimp |" in card
    assert "first 1 items per paradigm" in card
    for run in runs:
        res = json.loads((out / "eval" / f"{run}.json").read_text())[run]
        pairs = {b: res[b]["pairs"] for b in ("blimp", "supplement", "ewok")}
        assert pairs == {"blimp": 67, "supplement": 5, "ewok": 11}
        assert 0 <= res["macro"] <= 1 and res["perplexity"]["perplexity"] > 1
    study = json.loads((out / "study.json").read_text())
    assert set(study["final"]) == {"teacher-llama-tiny", "teacher-gpt2-tiny", "student", "student-kd"}
    assert set(study["differences"]) >= {"student-kd - student"}
    # bear_lite for every model, WSC fine-tuning for the students only (the demo's evaluation.finetune.models)
    assert all("bear_lite" in f for f in study["final"].values())
    assert [g for g, f in study["final"].items() if "wsc" in f] == ["student", "student-kd"]
    assert "wsc" in study["differences"]["student-kd - student"]
    table = (out / "study.md").read_text()
    assert all(f"| {g} |" in table for g in study["final"]) and "| macro |" in table and "WSC (maj. 63.5)" in table
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    stamps = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert len(stamps) == 12 and all(s["done"] for s in stamps.values())

    rc, log = _run(["--out", str(out), *TINY], tmp_path / "run2.log")
    assert rc == 0, log[-4000:]
    assert log.count("up to date, skipped") == 12 and "$ " not in log  # nothing re-run

    # DeepSpeed checkpoints load like the exported model, with or without final/ (then via config.yaml)
    import torch

    from babylm_ds.evaluation import load_model
    x = torch.randint(3, 500, (2, 12))
    kd = out / "runs" / "student-kd-s0"
    ref = load_model(kd / "final")[0](x).logits
    assert torch.allclose(load_model(kd / "checkpoints")[0](x).logits, ref, atol=1e-5)
    (kd / "final").rename(kd / "exported")
    model, tok = load_model(kd)
    assert torch.allclose(model(x).logits, ref, atol=1e-5) and tok.bos_token_id == 1
    gen = subprocess.run([sys.executable, "-m", "babylm_ds.cli", "generate", "--model", str(kd),
                          "--prompt", "London was", "--greedy", "--max-new-tokens", "5"],
                         capture_output=True, text=True)
    assert gen.returncode == 0 and gen.stdout.startswith("London was"), gen.stderr[-2000:]


def test_pipeline_bad_stage_is_a_clear_error(tmp_path):
    rc, log = _run(["--out", str(tmp_path), "--stages", "prepare,nope"], tmp_path / "bad.log")
    assert rc == 2 and "unknown stage(s) ['nope']" in log
    rc, log = _run(["--out", str(tmp_path / "x"), "--stages", "cache"], tmp_path / "missing.log")
    assert rc == 1 and "run the earlier stages first" in log.strip().splitlines()[-1]

"""`babylm-ds study`: spec checks, lr selection on dev loss, stamped stages, bootstrap intervals, and a
tiny study end to end (a killed run resumed from its checkpoint, finished runs skipped)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from babylm_ds.evaluation import stats
from babylm_ds.study import SpecError, load_spec, select_lr, student_runs, sweep_runs
from babylm_ds.training.jobs import run_stage
from launch import LAUNCH_ENV, ROOT

TINY = os.path.join(ROOT, "studies", "tiny.yaml")


def _spec(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_example_specs_load_and_plan():
    for name in sorted(os.listdir(os.path.join(ROOT, "studies"))):
        spec = load_spec(os.path.join(ROOT, "studies", name))
        runs = sweep_runs(spec)
        n = sum(len(a["lrs"]) for a in spec["architectures"].values()) * len(spec["seeds"])
        assert len(runs) == n and len({r.name for r in runs}) == n
    spec = load_spec(TINY)
    students = student_runs(spec, {"hgrn2": 0.003, "llama": 0.0003})
    assert [(r.name, r.model, r.lr, r.student) for r in students] == [("hgrn2-kd-s0", "babyhgrn-tiny", 0.003, "hgrn2-kd")]


@pytest.mark.parametrize("text, needle", [
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\nepochs: 3\n", "unknown top-level key(s) ['epochs']"),
    ("architectures: {a: {model: nope, lrs: [0.001]}}\n", "architectures.a.model 'nope' is not a preset"),
    ("architectures: {a: {model: llama-tiny, lrs: []}}\n", "architectures.a.lrs must be a non-empty list"),
    ("architectures: {a: {model: llama-tiny, lrs: [-1]}}\n", "architectures.a.lrs must be a positive number"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\ntraining: {epoch: 2}\n", "unknown key(s) ['epoch'] in 'training'"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\nstudents: {s: {arch: b, teachers: [a]}}\n",
     "students.s.arch must name an architecture"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\nstudents: {s: {arch: a, teachers: [x]}}\n",
     "students.s.teachers must list architectures"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\ntraining: {launcher: slurm}\n",
     "training.launcher must be one of deepspeed, torchrun, python, got 'slurm'"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001], training: {max_steps: 2.5}}}\n",
     "architectures.a.training.max_steps must be an integer"),
    ("architectures: [\n", "not valid YAML"),
])
def test_bad_specs_are_refused_with_one_line_naming_the_file(tmp_path, text, needle):
    path = _spec(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert needle in str(e.value) and str(e.value).startswith(path) and "\n" not in str(e.value)


def test_cli_bad_spec_exits_nonzero_with_one_line(tmp_path):
    path = _spec(tmp_path, "architectures: {a: {model: llama-tiny}}\n")
    p = subprocess.run([sys.executable, "-m", "babylm_ds.cli", "study", path], capture_output=True, text=True,
                       env={**os.environ, **LAUNCH_ENV}, cwd=ROOT)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "lrs must be a non-empty list" in p.stderr


def test_lr_is_selected_on_mean_dev_loss_over_seeds_ignoring_diverged_runs(tmp_path):
    spec = load_spec(_spec(tmp_path, "architectures: {a: {model: llama-tiny, lrs: [0.001, 0.003, 0.01]}}\nseeds: [0, 1]\n"))
    loss = {"a-lr0.001-s0": 3.0, "a-lr0.001-s1": 3.4, "a-lr0.003-s0": 3.3, "a-lr0.003-s1": 3.0,
            "a-lr0.01-s0": float("nan"), "a-lr0.01-s1": 1.0}
    assert select_lr(spec, loss) == {"a": 0.003}  # means 3.2, 3.15, nan


def test_run_stage_skips_resumes_and_redoes(tmp_path):
    out, stamp, calls = tmp_path / "o", str(tmp_path / "stages" / "x.json"), []

    def run(resume):
        calls.append(resume)
        out.mkdir(exist_ok=True)
        (out / "f").write_text("ok")

    def verify():
        if (out / "f").read_text() != "ok":
            raise ValueError("bad")

    assert run_stage(stamp, ["a"], [str(out)], verify, run) is not None and calls == [False]
    assert run_stage(stamp, ["a"], [str(out)], verify, run) is None and calls == [False]  # done: skipped
    json.dump({"spec": ["a"], "done": False}, open(stamp, "w"))  # killed mid-run: resumed in place
    run_stage(stamp, ["a"], [str(out)], verify, run)
    assert calls == [False, True]
    (out / "stale").write_text("")
    run_stage(stamp, ["b"], [str(out)], verify, run)  # changed spec: outputs removed, made again
    assert calls == [False, True, False] and not (out / "stale").exists()
    (out / "f").write_text("corrupt")  # same spec, output no longer verifies: redone
    run_stage(stamp, ["b"], [str(out)], verify, run)
    assert calls == [False, True, False, True] and (out / "f").read_text() == "ok"


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    a = {"p1": rng.integers(0, 2, 400).tolist(), "p2": [1] * 300}
    reps = stats.bootstrap_benchmark(a, "blimp", 2000)
    lo, hi = stats.interval(reps)
    point = (np.mean(a["p1"]) + 1.0) / 2
    assert lo < point < hi
    # only p1 varies: the score's sd is half the sd of p1's accuracy, sqrt(p(1-p)/n) / 2
    assert abs(reps.std() - np.sqrt(0.25 / 400) / 2) < 0.003
    b = {"p1": a["p1"], "p2": [0] + [1] * 299}
    diff = reps - stats.bootstrap_benchmark(b, "blimp", 2000)  # same items: paired draws
    assert stats.interval(diff)[0] >= 0 and stats.interval(reps - reps) == (0.0, 0.0)
    assert stats.interval(stats.bootstrap_benchmark({"p": [1, 1, 1]}, "x", 100)) == (1.0, 1.0)


def _study(out, env=None):
    return subprocess.run([sys.executable, "-m", "babylm_ds.cli", "study", TINY, "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, **LAUNCH_ENV, **(env or {})},
                          cwd=ROOT, timeout=1800)


@pytest.mark.slow
def test_tiny_study_end_to_end_with_a_killed_run_resumed(tmp_path):
    out = tmp_path / "study"
    killed = _study(out, {"BABYLM_DS_FAULT_AT_STEP": "0:6"})  # the first run dies after 6 steps
    assert killed.returncode == 1
    error = killed.stderr.strip().splitlines()[-1]
    assert error.startswith("babylm-ds study: error: command failed") and "hgrn2-lr0.003-s0.log" in error
    assert not (out / "runs" / "hgrn2-lr0.003-s0" / "final").exists()
    done = _study(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cmds = [line for line in (out / "logs" / "hgrn2-lr0.003-s0.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(cmds) == 2 and "--resume" not in cmds[0] and cmds[1].endswith("--resume")
    res = json.loads((out / "study.json").read_text())
    assert set(res["sweep"]) == {r.name for r in sweep_runs(load_spec(TINY))}
    for arch in ("hgrn2", "llama"):
        rows = {r["lr"]: r["dev_loss"] for r in res["sweep"].values() if r["arch"] == arch}
        assert res["selected_lr"][arch] == min(rows, key=rows.get)
    assert set(res["final"]) == {"hgrn2", "llama", "hgrn2-kd"}
    for group in res["final"].values():
        for row in ("blimp", "supplement", "ewok", "macro", "dev_loss"):
            lo, hi = group[row]["ci95"]
            assert lo <= group[row]["value"] <= hi
    assert set(res["differences"]) == {"hgrn2 - llama", "hgrn2-kd - hgrn2"}
    assert len(res["curves"]["hgrn2-kd-s0"]["blimp"]) == 1  # one epoch: one epoch-end evaluation
    assert (out / "study.md").read_text().startswith("# Study `tiny`")
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = _study(out)  # everything verifies: nothing is trained again
    assert again.returncode == 0 and again.stdout.count("up to date, skipped") == 1 + 4 + 2 + 3
    assert json.loads((out / "study.json").read_text())["final"] == res["final"]

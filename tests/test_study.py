"""`babylm-ds study`: spec checks, lr selection on dev loss, stamped stages, bootstrap intervals, the report's
BEAR and fine-tuning rows, a tiny study end to end (a killed run resumed from its checkpoint, finished runs
skipped) and one with BEAR and fine-tuning (its stages skipped when re-run)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from babylm_ds.evaluation import stats
from babylm_ds.study import SpecError, load_spec, report, run_study, select_lr, student_runs, sweep_runs
from babylm_ds.study.spec import check_spec
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
    assert [(r.name, r.model, r.lr, r.student) for r in students] == [
        ("hgrn2-kd-s0", "babyhgrn-tiny", 0.003, "hgrn2-kd")]


@pytest.mark.parametrize("text, needle", [
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\nepochs: 3\n", "unknown top-level key(s) ['epochs']"),
    ("architectures: {a: {model: nope, lrs: [0.001]}}\n", "architectures.a.model 'nope' is not a preset"),
    ("architectures: {a: {model: llama-tiny, lrs: []}}\n", "architectures.a.lrs must be a non-empty list"),
    ("architectures: {a: {model: llama-tiny, lrs: [-1]}}\n", "architectures.a.lrs must be a positive number"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\ntraining: {epoch: 2}\n",
     "unknown key(s) ['epoch'] in 'training'"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\nstudents: {s: {arch: b, teachers: [a]}}\n",
     "students.s.arch must name an architecture"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\nstudents: {s: {arch: a, teachers: [x]}}\n",
     "students.s.teachers must list architectures"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001]}}\ntraining: {launcher: slurm}\n",
     "training.launcher must be one of deepspeed, torchrun, python, got 'slurm'"),
    ("architectures: {a: {model: llama-tiny, lrs: [0.001], training: {max_steps: 2.5}}}\n",
     "architectures.a.training.max_steps must be an integer"),
    ("architectures: [\n", "not valid YAML"),
    ("evaluation: {tasks: 'blimp,bera'}\n", "evaluation.tasks 'blimp,bera' names unknown task(s) ['bera']"),
    ("evaluation: {epoch_tasks: bear}\n", "evaluation.epoch_tasks 'bear' names unknown task(s) ['bear']"),
    ("evaluation: {bear_limit: 0}\n", "evaluation.bear_limit must be >= 1, got 0"),
    ("evaluation: {finetune: [rte]}\n", "'evaluation.finetune' must be a mapping"),
    ("evaluation: {finetune: {tasks: 'rte,cola'}}\n",
     "evaluation.finetune.tasks: unknown fine-tuning task(s) ['cola']"),
    ("evaluation: {finetune: {max_train: 0}}\n", "evaluation.finetune.max_train must be >= 1, got 0"),
    ("evaluation: {finetune: {seq_len: 1.5}}\n", "evaluation.finetune.seq_len must be an integer, got 1.5"),
    ("evaluation: {finetune: {lr: 2}}\n", "evaluation.finetune.lr 2 is out of range"),
    ("evaluation: {finetune: {epoch: 2}}\n", "unknown key(s) ['epoch'] in 'evaluation.finetune'"),
    ("evaluation: {finetune: {models: [b]}}\n", "evaluation.finetune.models must list architectures or students"),
])
def test_bad_specs_are_refused_with_one_line_naming_the_file(tmp_path, text, needle):
    if not text.startswith("architectures"):
        text = "architectures: {a: {model: llama-tiny, lrs: [0.001]}}\n" + text
    path = _spec(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert needle in str(e.value) and str(e.value).startswith(path) and "\n" not in str(e.value)


def test_finetune_section_defaults_and_switch(tmp_path):
    """evaluation.finetune: the tree's finetune fields with their defaults, `models` all by default; absent or
    `tasks: null`: no fine-tuning."""
    head = "architectures: {a: {model: llama-tiny, lrs: [0.001]}}\n"
    ft = load_spec(_spec(tmp_path, head + "evaluation: {finetune: {max_train: 8}}\n"))["evaluation"]["finetune"]
    assert ft == {"tasks": "rte,wsc", "data_dir": None, "max_train": 8, "epochs": None, "lr": 3e-5, "batch_size": None,
                  "valid_batch_size": 64, "seq_len": 512, "seed": 42, "models": None}
    assert load_spec(_spec(tmp_path, head))["evaluation"]["finetune"] is None
    spec = load_spec(_spec(tmp_path, head + "evaluation: {finetune: {tasks: null}}\n"))
    assert spec["evaluation"]["finetune"] is None


def test_cli_bad_spec_exits_nonzero_with_one_line(tmp_path):
    path = _spec(tmp_path, "architectures: {a: {model: llama-tiny}}\n")
    p = subprocess.run([sys.executable, "-m", "babylm_ds.cli", "study", path], capture_output=True, text=True,
                       env={**os.environ, **LAUNCH_ENV}, cwd=ROOT)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "lrs must be a non-empty list" in p.stderr


def test_lr_is_selected_on_mean_dev_loss_over_seeds_ignoring_diverged_runs(tmp_path):
    spec = load_spec(_spec(tmp_path, "architectures: {a: {model: llama-tiny, lrs: [0.001, 0.003, 0.01]}}\n"
                                     "seeds: [0, 1]\n"))
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


def test_bear_bootstrap_resamples_instances_within_relations():
    """BEAR's score pools items over relations; an instance's templates move together, so perfectly agreeing
    templates give the spread of n instances (not of 3n independent items)."""
    rng = np.random.default_rng(1)
    right = rng.integers(0, 2, 400)
    clustered = {"P1": [[int(x)] * 3 for x in right[:300]], "P2": [[int(x)] * 3 for x in right[300:]]}
    reps = stats.bootstrap_pooled(clustered, "bear", 4000)
    p = right.mean()
    assert reps.mean() == pytest.approx(p, abs=0.003)
    # stratified by relation: the variance of the pooled share is sum_r (n_r / n)^2 p_r (1 - p_r) / n_r
    var = sum(len(c) / 400 ** 2 * np.mean(c) * (1 - np.mean(c)) for c in (right[:300], right[300:]))
    assert reps.std() == pytest.approx(np.sqrt(var), rel=0.08)
    flat = {"P1": [[int(x)] for x in np.repeat(right[:300], 3)], "P2": [[int(x)] for x in np.repeat(right[300:], 3)]}
    assert stats.bootstrap_pooled(flat, "bear", 4000).std() < 0.7 * reps.std()  # items as if independent: too narrow


def _fake_eval(blimp, bear, rte, loss):
    """A `babylm-ds eval --items` result with a `babylm-ds finetune` result's tasks under "finetune"."""
    mean = float(np.mean([np.mean(c) for c in blimp.values()]))
    return {"blimp": {"mean": mean, "correct": blimp, "paradigms": {}, "pairs": 0}, "macro": mean,
            "bear_lite": sum(map(sum, sum(bear.values(), []))) / sum(len(x) for c in bear.values() for x in c),
            "bear_lite_correct": bear, "bear_lite_relations": {},
            "perplexity": {"loss": float(np.mean(loss)), "perplexity": float(np.exp(np.mean(loss))),
                           "sequence_losses": loss},
            "finetune": {"rte": {"accuracy": float(np.mean(rte)), "f1": 0.5, "mcc": 0.0, "majority": 0.6, "n_train": 16,
                                 "n_valid": len(rte), "epochs": 1, "best_epoch": 1, "seconds": 1.0, "correct": rte}}}


def test_report_shows_bear_and_finetuning_with_intervals_and_paired_differences(tmp_path):
    spec = load_spec(_spec(tmp_path, "architectures: {a: {model: llama-tiny, lrs: [0.001]}, "
                                     "b: {model: babyhgrn-tiny, lrs: [0.001]}}\n"
                                     "evaluation: {tasks: 'blimp,bear_lite', bear_limit: 2, bootstrap: 500, "
                                     "finetune: {tasks: rte, max_train: 16, epochs: 1}}\n"))
    rng = np.random.default_rng(0)
    blimp = {"p1": rng.integers(0, 2, 50).tolist(), "p2": rng.integers(0, 2, 50).tolist()}
    bear = {"P1": [[int(x)] for x in rng.integers(0, 2, 40)], "P2": [[int(x)] for x in rng.integers(0, 2, 20)]}
    rte = rng.integers(0, 2, 200).tolist()
    loss = rng.normal(4, 0.5, 30).tolist()
    rte_b = [1] * 10 + rte[10:]  # b: ten more right on the same valid items
    evals = {"a-lr0.001-s0": _fake_eval(blimp, bear, rte, loss),
             "b-lr0.001-s0": _fake_eval(blimp, bear, rte_b, loss)}
    sweep = sweep_runs(spec)
    metrics = {}
    for r in sweep:
        metrics[r.name] = tmp_path / f"{r.name}.jsonl"
        metrics[r.name].write_text(json.dumps({"step": 4, "dev/loss": 4.0}) + "\n")
    res = report.build(spec, {r.name: (4, 4) for r in sweep}, sweep, [], {"a": 0.001, "b": 0.001},
                       {r.name: {"dev_loss": 4.0} for r in sweep}, evals, metrics, {"a": 1e6, "b": 1e6})
    for group, run in (("a", "a-lr0.001-s0"), ("b", "b-lr0.001-s0")):
        f = res["final"][group]
        assert f["bear_lite"]["value"] == evals[run]["bear_lite"]
        assert f["rte"]["value"] == np.mean(evals[run]["finetune"]["rte"]["correct"])
        assert f["rte"]["majority"] == 0.6
        for row in ("blimp", "macro", "bear_lite", "rte", "dev_loss"):
            lo, hi = f[row]["ci95"]
            assert lo <= f[row]["value"] <= hi and lo < hi
    d = res["differences"]["a - b"]
    assert d["rte"]["value"] == pytest.approx(-np.mean([r != 1 for r in rte[:10]]) * 10 / 200)
    assert d["bear_lite"]["ci95"] == (0.0, 0.0) and d["rte"]["ci95"][1] <= 0  # same items: paired draws
    md = res["markdown"]
    assert "| model | params | blimp | macro | bear_lite | RTE (maj. 60.0) | dev loss |" in md
    assert "macro: their mean (BEAR and the fine-tuning tasks do not enter it)" in md
    assert "bear_lite: the first 2 instances of each relation" in md and "## Fine-tuning" in md
    report.write(str(tmp_path / "study"), res)
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"


FT_SPEC = """
data: {dir: DATA}
training: {micro_batch: 8, max_steps: 4, warmup_steps: 1, launcher: python}
architectures:
  hgrn2: {model: babyhgrn-tiny, lrs: [0.003], config: {hidden_size: 32, num_hidden_layers: 2, expand_ratio: 16}}
  llama: {model: llama-tiny, lrs: [0.003], config: {hidden_size: 32, num_hidden_layers: 2, intermediate_size: 64}}
evaluation: {tasks: "blimp,bear_lite", final_limit: 1, bear_limit: 1, bootstrap: 100,
             finetune: {tasks: "rte,wsc", max_train: 16, epochs: 1, batch_size: 8, seq_len: 32}}
"""


def test_study_with_bear_and_finetuning_end_to_end_and_resumed(tmp_path, tiny_data_dir, monkeypatch, capsys):
    """Two tiny architectures: zero-shot + bear_lite and RTE / WSC fine-tuning of each final model as stamped
    stages; the report's rows with intervals and majority baselines; a re-run redoes nothing."""
    for k, v in LAUNCH_ENV.items():
        monkeypatch.setenv(k, v)
    spec = check_spec(yaml.safe_load(FT_SPEC.replace("DATA", str(tiny_data_dir))), str(tmp_path / "ft.yaml"))
    out = tmp_path / "study"
    res = run_study(spec, str(out), threads=1)
    for run in ("hgrn2-lr0.003-s0", "llama-lr0.003-s0"):
        ev = json.loads((out / "eval" / f"{run}.json").read_text())[run]
        assert len(ev["bear_lite_correct"]) == 60 and all(c == [[0]] or c == [[1]]
                                                           for c in ev["bear_lite_correct"].values())
        ft = json.loads((out / "eval" / f"{run}-finetune.json").read_text())
        assert {t: len(r["correct"]) for t, r in ft["tasks"].items()} == {"rte": 277, "wsc": 104}
        assert ft["settings"]["max_train"] == 16 and ft["tasks"]["rte"]["n_train"] == 16
        card = (out / "runs" / run / "final" / "README.md").read_text()
        assert "## Fine-tuning ((Super)GLUE)" in card and "| bear_lite |" in card
    for group in ("hgrn2", "llama"):
        f = res["final"][group]
        assert f["rte"]["majority"] == pytest.approx(146 / 277) and f["wsc"]["majority"] == pytest.approx(66 / 104)
        for row in ("blimp", "macro", "bear_lite", "rte", "wsc", "dev_loss"):
            lo, hi = f[row]["ci95"]
            assert lo <= f[row]["value"] <= hi
    assert {"rte", "wsc", "bear_lite"} <= set(res["differences"]["hgrn2 - llama"])
    md = (out / "study.md").read_text()
    assert "RTE (maj. 52.7)" in md and "WSC (maj. 63.5)" in md and "| bear_lite |" in md
    capsys.readouterr()
    again = run_study(spec, str(out), threads=1)
    printed = capsys.readouterr().out
    assert printed.count("up to date, skipped") == 2 + 2 + 2 and "$ " not in printed  # train, eval, finetune
    assert "[finetune-hgrn2-lr0.003-s0] up to date, skipped" in printed
    log = (out / "logs" / "finetune-hgrn2-lr0.003-s0.log").read_text()
    assert [line for line in log.splitlines() if line.startswith("$ ")] == [log.splitlines()[0]]  # ran once
    assert again["final"] == res["final"]

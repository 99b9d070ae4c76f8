"""Zero-shot and fine-tuning predictions in the layout of the BabyLM evaluation pipeline (evaluation-pipeline-2025).

Its `sentence_zero_shot/run.py --backend causal --save_predictions` writes, per dataset,
`RESULTS/<model>/<revision>/zero_shot/causal/<task>/<dataset>/predictions.json` =
{UID: {"predictions": [{"id": "<UID>_<i>", "pred": <chosen completion>}, ...]}} (UID = BLiMP's `UID`,
the supplement's file name, EWoK's `Domain`; completions: the sentence for BLiMP / supplement,
" " + Target for EWoK), plus `best_temperature_report.txt`; its `collate_preds.py` reads
blimp/blimp_filtered, blimp/supplement_filtered and ewok/ewok_filtered from there. `write_predictions`
writes those three from babylm-ds's own decisions (the same items and scoring as `babylm-ds eval`);
its `finetune/run.py` writes `RESULTS/<model>/<revision>/finetune/<task>/{predictions.json,results.txt}`,
which `write_finetune_predictions` writes from `babylm-ds finetune`'s kept epoch. The leaderboard's other
tasks (entity tracking, wug, COMPS, reading, AoA) come from the official pipeline. The EWoK predictions
hold target sentences: keep them out of public places.
"""
import os

from babylm_ds.utils.io import atomic_write_bytes, atomic_write_json

from .data import read_benchmark

DATASETS = {"blimp": ("blimp", "blimp_filtered"), "supplement": ("blimp", "supplement_filtered"),
            "ewok": ("ewok", "ewok_filtered")}


def _completions(bench, row):
    if bench == "ewok":
        return " " + row["Target1"], " " + row["Target2"]
    return row["sentence_good"], row["sentence_bad"]


def _report(accuracy):
    """`best_temperature_report.txt` as the pipeline prints it (temperature 1, accuracies in %)."""
    lines = ["TEMPERATURE: 1.00", "", "### UID ACCURACY"]
    lines += [f"{uid}: {100 * acc:.2f}" for uid, acc in accuracy.items()]
    lines += ["", "### AVERAGE ACCURACY", f"{100 * sum(accuracy.values()) / len(accuracy):.2f}", ""]
    return "\n".join(lines) + "\n"


def write_predictions(results_dir, model_name, decisions, data_dir=None, revision="main"):
    """Write the pipeline's predictions.json and report for each benchmark in `decisions`
    (`zeroshot.item_decisions` over whole paradigms); returns the paths of the predictions files."""
    paths = []
    for bench, paradigms in decisions.items():
        if bench not in DATASETS:
            continue  # ewok_swap has no leaderboard file
        rows = read_benchmark(bench, data_dir)
        predictions, accuracy = {}, {}
        for paradigm, right in paradigms.items():
            if len(right) != len(rows[paradigm]):
                raise ValueError(f"{bench}/{paradigm}: {len(right)} of {len(rows[paradigm])} items scored; the "
                                 "leaderboard needs every item (run without --limit)")
            preds = [_completions(bench, row)[0 if ok else 1] for ok, row in zip(right, rows[paradigm], strict=True)]
            predictions[paradigm] = {"predictions": [{"id": f"{paradigm}_{i}", "pred": p} for i, p in enumerate(preds)]}
            accuracy[paradigm] = sum(right) / len(right)
        task, dataset = DATASETS[bench]
        out = os.path.join(results_dir, model_name, revision, "zero_shot", "causal", task, dataset)
        os.makedirs(out, exist_ok=True)
        atomic_write_json(os.path.join(out, "predictions.json"), predictions)
        atomic_write_bytes(os.path.join(out, "best_temperature_report.txt"), _report(accuracy).encode())
        paths.append(os.path.join(out, "predictions.json"))
    return paths


def write_finetune_predictions(results_dir, model_name, task, preds, scores, revision="main"):
    """The pipeline's `finetune/<task>/predictions.json` ({task: {"predictions": [{"id": "<task>_<i>", "pred": int}]}},
    over the valid split in file order) and `results.txt` ("metric: value" lines); returns the predictions path."""
    out = os.path.join(results_dir, model_name, revision, "finetune", task)
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "predictions.json"),
                      {task: {"predictions": [{"id": f"{task}_{i}", "pred": int(p)} for i, p in enumerate(preds)]}})
    lines = [f"{k}: {scores[k]}" for k in ("accuracy", "f1", "mcc")]
    atomic_write_bytes(os.path.join(out, "results.txt"), "\n".join(lines).encode())
    return os.path.join(out, "predictions.json")

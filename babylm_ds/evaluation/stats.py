"""Uncertainty of evaluation results: bootstrap replicates over items, percentile intervals.

A benchmark score is the mean over paradigms of each paradigm's accuracy, so items are resampled
within each paradigm (stratified). BEAR's score is the share of all its items right: instances are
resampled within each relation (an instance's templates stay together), relations weighted by their
items. A fine-tuning accuracy is the mean over the valid split's examples. The draws depend only on
(seed, benchmark, stratum, item count): two models scored on the same items get the same draws, and
the replicates of their difference give a paired interval.
"""
import zlib

import numpy as np


def _rng(seed, *names):
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def bootstrap_benchmark(correct, bench, n_boot=1000, seed=0):
    """Replicates [n_boot] of a benchmark score from {paradigm: [0/1 per item]}."""
    total = np.zeros(n_boot)
    for paradigm, c in sorted(correct.items()):
        c = np.asarray(c, dtype=np.float64)
        draws = _rng(seed, bench, paradigm, str(len(c))).integers(0, len(c), (n_boot, len(c)))
        total += c[draws].mean(1)
    return total / len(correct)


def bootstrap_pooled(correct, name, n_boot=1000, seed=0):
    """Replicates [n_boot] of the share of items right from {stratum: [[0/1 per item] per cluster]}: clusters
    resampled within each stratum (BEAR: instances, their templates, within relations)."""
    right, total = np.zeros(n_boot), 0
    for stratum, clusters in sorted(correct.items()):
        sums = np.asarray([sum(c) for c in clusters], dtype=np.float64)
        draws = _rng(seed, name, stratum, str(len(sums))).integers(0, len(sums), (n_boot, len(sums)))
        right += sums[draws].sum(1)
        total += sum(len(c) for c in clusters)
    return right / total


def bootstrap_mean(values, name, n_boot=1000, seed=0):
    """Replicates [n_boot] of the mean of `values` (e.g. per-window dev losses)."""
    v = np.asarray(values, dtype=np.float64)
    return v[_rng(seed, name, str(len(v))).integers(0, len(v), (n_boot, len(v)))].mean(1)


def interval(replicates, level=0.95):
    """(low, high) percentile interval of bootstrap replicates."""
    lo, hi = np.quantile(np.asarray(replicates), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_result(result, benchmarks, n_boot=1000, seed=0):
    """{row: replicates} for the benchmarks of a `babylm-ds eval --items` result that hold per-item correctness
    (BEAR: `bear_correct`), their macro average (when all of `benchmarks` are there), dev loss (from
    `perplexity(..., per_sequence=True)` under "perplexity") and the fine-tuning tasks (a `babylm-ds finetune`
    result's "tasks" under "finetune", each with its valid examples' "correct")."""
    reps = {b: bootstrap_benchmark(result[b]["correct"], b, n_boot, seed)
            for b in result if isinstance(result[b], dict) and "correct" in result[b]}
    reps.update({b[:-len("_correct")]: bootstrap_pooled(c, b, n_boot, seed)
                 for b, c in result.items() if b.startswith("bear") and b.endswith("_correct")})
    reps.update({t: bootstrap_mean(r["correct"], t, n_boot, seed) for t, r in result.get("finetune", {}).items()})
    if benchmarks and all(b in reps for b in benchmarks):
        reps["macro"] = np.mean([reps[b] for b in benchmarks], axis=0)
    if "sequence_losses" in result.get("perplexity", {}):
        reps["dev_loss"] = bootstrap_mean(result["perplexity"]["sequence_losses"], "dev_loss", n_boot, seed)
    return reps

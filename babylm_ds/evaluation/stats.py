"""Uncertainty of evaluation results: bootstrap replicates over items, percentile intervals.

A benchmark score is the mean over paradigms of each paradigm's accuracy, so items are resampled
within each paradigm (stratified). The draws depend only on (seed, benchmark, paradigm, item count):
two models scored on the same items get the same draws, and the replicates of their difference give
a paired interval.
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


def bootstrap_mean(values, name, n_boot=1000, seed=0):
    """Replicates [n_boot] of the mean of `values` (e.g. per-window dev losses)."""
    v = np.asarray(values, dtype=np.float64)
    return v[_rng(seed, name, str(len(v))).integers(0, len(v), (n_boot, len(v)))].mean(1)


def interval(replicates, level=0.95):
    """(low, high) percentile interval of bootstrap replicates."""
    lo, hi = np.quantile(np.asarray(replicates), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_result(result, benchmarks, n_boot=1000, seed=0):
    """{row: replicates} for the benchmarks of an `evaluate_model(..., items=True)` result that hold
    per-item correctness, their macro average (when all of `benchmarks` are there), and dev loss
    (from `perplexity(..., per_sequence=True)` under "perplexity")."""
    reps = {b: bootstrap_benchmark(result[b]["correct"], b, n_boot, seed)
            for b in result if isinstance(result[b], dict) and "correct" in result[b]}
    if benchmarks and all(b in reps for b in benchmarks):
        reps["macro"] = np.mean([reps[b] for b in benchmarks], axis=0)
    if "sequence_losses" in result.get("perplexity", {}):
        reps["dev_loss"] = bootstrap_mean(result["perplexity"]["sequence_losses"], "dev_loss", n_boot, seed)
    return reps

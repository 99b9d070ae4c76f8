"""Zero-shot evaluation (BLiMP, BLiMP supplement, EWoK, BEAR), (Super)GLUE fine-tuning, dev perplexity and text
generation."""
from .bear import evaluate_bear
from .data import BENCHMARKS, load_tasks, read_benchmark
from .load import load_model
from .perplexity import perplexity
from .zeroshot import evaluate_model, score_texts

__all__ = ["BENCHMARKS", "evaluate_bear", "evaluate_model", "load_model", "load_tasks", "perplexity", "read_benchmark",
           "score_texts"]

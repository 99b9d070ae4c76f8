"""Zero-shot evaluation of one model; same flags as `babylm-ds eval` (see --help).

    python launchers/evaluate.py --model RUN/final [--tasks blimp,supplement,ewok] [--limit N] [--ppl-data DATA]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from babylm_ds.evaluation.cli import main  # noqa: E402
from babylm_ds.utils.cli import run_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))

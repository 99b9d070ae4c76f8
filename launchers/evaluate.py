"""Zero-shot evaluation of one model; same flags as `babylm-ds eval` (see --help).

    python launchers/evaluate.py --model RUN/final [--tasks blimp,supplement,ewok] [--limit N] [--ppl-data DATA]
"""
import _preamble  # first: see launchers/_preamble.py

# isort: split
import sys

from babylm_ds.evaluation.cli import main
from babylm_ds.training import preempt
from babylm_ds.utils.cli import run_cli

if __name__ == "__main__":
    preempt.uninstall(_preamble.STOPS)  # nothing to save: a stop signal ends it
    sys.exit(run_cli(main))

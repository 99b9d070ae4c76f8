"""`babylm-ds study`: architectures x learning rates x seeds, per-epoch evaluation, lr selected on dev loss,
students distilled from the selected teachers, results with bootstrap intervals. The demo pipeline is the
study of studies/demo.yaml (`demo`)."""
from babylm_ds.study.runner import PHASES, Study, run_study, select_lr
from babylm_ds.study.spec import Run, SpecError, load_spec, student_runs, sweep_runs

__all__ = ["PHASES", "Run", "SpecError", "Study", "load_spec", "run_study", "select_lr", "student_runs", "sweep_runs"]

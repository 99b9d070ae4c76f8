"""End-to-end demo: prepare data -> pretrain the teacher(s) -> cache their logits -> distil a BabyHGRN student
-> train the same student without KD -> zero-shot eval of all of them -> one report.

    python launchers/pipeline.py --out outputs/demo                 (`make demo`: tiny presets, minutes on CPU)
    python launchers/pipeline.py --out runs/x --max-words 2000000 --steps 2000 --full-eval

It is the study of studies/demo.yaml (babylm_ds.study.demo; `babylm-ds study studies/demo.yaml` runs the
same), its settings as flags. Each stage shells out to the project's own commands (`babylm-ds prepare`,
the deepspeed launcher over launchers/{pretrain,cache_logits,distill}.py, launchers/evaluate.py), so it
exercises exactly what a user runs. A stage is skipped when its output exists and verifies and was made by
the same command; an interrupted stage is resumed (`--resume`), a changed one is redone from scratch.
--force redoes the selected --stages.
"""
import _preamble  # first: see launchers/_preamble.py

# isort: split
import sys

from babylm_ds.training import preempt
from babylm_ds.utils.cli import run_cli


def main(argv=None):
    from babylm_ds.study import demo, run_study

    values, phases, args = demo.parse_args(argv)
    spec = demo.demo_spec(values)
    if args.print_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=120))
        return 0
    if "run.out" not in values:
        raise ValueError("give the output dir: --out DIR (make demo: outputs/demo)")
    preempt.relay(_preamble.STOPS)  # SIGTERM/SIGUSR1 reach the running job's ranks; then it stops (exit 75)
    run_study(spec, values["run.out"], values.get("run.force", False), args.dry_run, values.get("run.threads"),
              show=True, phases=phases)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

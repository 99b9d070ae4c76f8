"""`babylm-ds study SPEC`: run (or resume) a study and write OUT/study.{md,json,png}."""
import os
import sys

from babylm_ds.config import build_parser, namespace_values


def main(argv=None):
    p = build_parser("study", __doc__, prog="babylm-ds study")
    p.add_argument("spec", help="study spec, YAML or JSON (examples in studies/)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    args = p.parse_args(argv)
    values = namespace_values(args)
    from babylm_ds.study import load_spec, run_study

    spec = load_spec(args.spec)
    if args.print_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=120))
        return 0
    from babylm_ds.training import preempt

    preempt.relay()  # SIGTERM/SIGUSR1 reach the running job's ranks; then the study stops (exit 75)
    run_study(spec, values["run.out"] or os.path.join("runs", f"study-{spec['name']}"), values["run.force"],
              args.dry_run, values["run.threads"])
    return 0


if __name__ == "__main__":
    from babylm_ds.utils.cli import run_cli
    sys.exit(run_cli(main, prog="babylm-ds study"))

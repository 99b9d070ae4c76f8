"""`babylm-ds study SPEC`: run (or resume) a study and write OUT/study.{md,json,png}."""
import argparse
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="babylm-ds study", description=__doc__)
    p.add_argument("spec", help="study spec, YAML or JSON (examples in studies/)")
    p.add_argument("--out", default=None, help="output dir (default: runs/study-NAME)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per rank (default: cores / world size; 1 on a machine busy with other work)")
    p.add_argument("--force", action="store_true", help="redo every run even if its outputs verify")
    args = p.parse_args(argv)
    from babylm_ds.study import SpecError, load_spec, run_study
    from babylm_ds.training import preempt
    from babylm_ds.training.jobs import JobError, JobStopped

    preempt.relay()  # preempt: SIGTERM/SIGUSR1 reach the running jobs' ranks; the study then stops (exit 75)
    try:
        spec = load_spec(args.spec)
        run_study(spec, args.out or os.path.join("runs", f"study-{spec['name']}"), args.force, args.dry_run, args.threads)
    except JobStopped as e:
        print(f"babylm-ds study: {e}", file=sys.stderr)
        return preempt.EXIT_STOPPED
    except (SpecError, JobError, OSError, ValueError) as e:
        print(f"babylm-ds study: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

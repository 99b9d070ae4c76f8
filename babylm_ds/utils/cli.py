"""How every command line fails: an anticipated error (bad input, refused overwrite, full disk, a diverged
run: ValueError or OSError) is one line on stderr and exit status 1 (or the error's `exit_status`, then
without "error:": e.g. a job stopped by a signal, 75); `--debug` anywhere on the command line (or
BABYLM_DS_DEBUG=1) shows its traceback instead. Other exceptions are bugs and keep theirs."""
import ctypes
import os
import signal
import sys

ANTICIPATED = (ValueError, OSError)


class EchoedError(ValueError):
    """An anticipated error that another rank printed (or will): raised here so this rank stops too, exits
    1 without printing it again, so a multi-rank job says it once."""


def die_with_launcher():
    """Under a launcher (torchrun, deepspeed: LOCAL_RANK is set) ask the kernel for SIGTERM when the
    launcher dies (prctl PR_SET_PDEATHSIG): ranks run in their own session, so killing the launcher's
    process group would otherwise leave them training. SIGTERM, not SIGKILL: a training rank then saves
    and stops (training.preempt), any other process dies. A launcher that died before this call (while
    the rank imported) is noticed by `training.preempt.install`, from what launchers/_preamble.py recorded."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def run_cli(main, argv=None, prog=None):
    """`sys.exit(run_cli(main))`: call `main(argv)` (argv without --debug) with the policy above."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BABYLM_DS_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except ANTICIPATED as e:
        if debug:
            raise
        status = getattr(e, "exit_status", None)
        if not isinstance(e, EchoedError):
            print(f"{prog or os.path.basename(sys.argv[0])}: {'error: ' if status is None else ''}{one_line(e)}",
                  file=sys.stderr, flush=True)
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # an implicit teardown at exit can abort (SIGABRT)
        return status or 1

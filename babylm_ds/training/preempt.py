"""Stop signals (SIGTERM, SIGUSR1: a scheduler's time limit, preemption or warning): a run saves and stops.

On a rank (launchers/_preamble.py, a launcher script's first lines, records the stop signals that come while it
imports and who launched it; the script calls `install` once imported):
- before `arm()` (start-up: imports, data checks, model build) a stop signal ends the process at once with
  EXIT_STOPPED and one line: nothing has been trained, nothing is lost;
- once armed (the training loop: `callbacks.StopOnSignal`; the cache's shard loop) a signal is only recorded;
  `requested()`, a collective called once per optimizer step (or cache shard), tells every rank whether any
  rank got one, so all ranks save the same checkpoint and end together with `stop()`: one line, exit
  EXIT_STOPPED;
- after `disarm()` (the run is finishing: final save, export) signals are ignored.
A second signal never interrupts a save; a SIGKILL that follows leaves the last sealed checkpoint in charge.

Launchers in between: torchrun passes SIGTERM (and SIGUSR1 when TORCHELASTIC_SIGNALS_TO_HANDLE lists it) to
its ranks and SIGKILLs them 30 s later; DeepSpeed's per-node `launch` passes SIGTERM/SIGINT the same way;
DeepSpeed's runner on one node passes nothing on. So a rank asks for SIGTERM (not SIGKILL) when its parent
dies (`utils.cli.die_with_launcher`) and watches the launchers above its parent (`_watch_launchers`): a
launcher killed by any signal makes its ranks save and stop, and one that died while the rank was still
importing (before either was in place) stops it at `install`.

In a process that runs launcher jobs (the pipeline, a study; `training.jobs`): `relay()` records a stop
signal and passes it to the ranks of every running job (not to the launcher wrappers, which would give them
30 s), and to each rank that starts later; no new job is started.
"""
import contextlib
import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)
EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, work saved; rerun the same command to continue
SIGNAL_ENV = "BABYLM_DS_SIGNAL_AT_STEP"  # tests: "rank:N[:SIGUSR1]" raises the signal (default SIGTERM) on that
#                                          rank once N optimizer steps (cache_logits: N shards) are done
LAUNCHERS = ("deepspeed", "torchrun", "deepspeed.launcher.runner", "deepspeed.launcher.launch", "torch.distributed.run")

_received = []  # stop signals, in the order they came
_state = {"mode": None, "phase": "starting"}  # mode: None | "rank" | "relay"; phase (rank): starting/armed/finishing
_jobs, _signalled = {}, set()  # relay: pid -> processes seen in the job's tree; (pid, start time) signalled
_lock = threading.Lock()  # guards _jobs


def _say(line):
    """One line on stderr, written directly (safe inside a signal handler)."""
    os.write(2, f"{os.path.basename(sys.argv[0])}: {line}\n".encode())


def _name(signum):
    return signal.Signals(signum).name


# --- ranks ---------------------------------------------------------------------------------------
def install(early=(), ancestors=()):
    """On a rank, before any work: handle the stop signals as described above. `early`: signals that the
    launcher script recorded while it was importing; `ancestors`: [(pid, argv)] of its parent, the parent's
    parent, ... as its first line saw them. A signal in `early`, or a launcher among `ancestors` gone since,
    ends the process at once (as a stop while starting)."""
    _state["mode"] = "rank"
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    for s in early:
        _on_signal(s, None)
    _watch_launchers(ancestors)


def uninstall(early=()):
    """In a launcher script with nothing to save (evaluate.py): the stop signals act as by default again; one
    that came while it imported ends it now."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    for s in early[:1]:
        signal.raise_signal(s)


def _on_signal(signum, _frame):
    if _state["phase"] == "starting":
        if os.environ.get("RANK", "0") == "0":
            _say(f"stopped by {_name(signum)} while starting, before any step; nothing to save; rerun the same command")
        os._exit(EXIT_STOPPED)
    _received.append(signum)


def arm():
    _state["phase"] = "armed"


def disarm():
    _state["phase"] = "finishing"


def requested(step=None):
    """Collective (every rank, same point): the name of the stop signal any rank received, else None. A
    no-op returning None in a process that did not `install`."""
    if _state["mode"] != "rank":
        return None
    _test_signal(step)
    import torch
    import torch.distributed as dist

    flags = torch.tensor([int(s in _received) for s in SIGNALS])
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            flags = flags.cuda()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    hit = [s for s, f in zip(SIGNALS, flags.tolist(), strict=True) if f]
    return _name(hit[0]) if hit else None


def _test_signal(step):
    rank, at, *sig = os.environ.get(SIGNAL_ENV, "-1:-1").split(":")
    if step is not None and (int(rank), int(at)) == (int(os.environ.get("RANK", 0)), step):
        signal.raise_signal(getattr(signal, sig[0] if sig else "SIGTERM"))


def stop(signame, detail, rank):
    """After every rank saved (and passed a barrier): rank 0 says `PROG: stopped by SIG <detail>`; every rank
    exits with EXIT_STOPPED at once. No interpreter teardown: it can take minutes (a garbage collection of the
    whole model graph was measured at > 2 min on a busy machine), past a scheduler's grace period, and an
    implicit process-group teardown can abort; everything worth keeping is written and closed by now."""
    if rank == 0:
        _say(f"stopped by {signame} {detail}")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(EXIT_STOPPED)


def ignore_in_worker(_worker_id=None):
    """DataLoader `worker_init_fn`: workers leave the stop signals to their rank (a signal to the process
    group would otherwise kill them and fail the step the rank is finishing)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _is_launcher(argv):
    return any(os.path.basename(a) in LAUNCHERS for a in argv[:4])


def _watch_launchers(ancestors):
    """Under a launcher (LOCAL_RANK is set): the launchers this rank runs under are its parent and those right
    above it in `ancestors` (DeepSpeed's runner above its `launch`). Each must still be the parent of the one
    below, as at the first line (a launcher that died was replaced by init or a subreaper): if one is not, stop
    now; else SIGTERM this rank when one dies (the runner, killed alone, would leave `launch` and the ranks
    training). The parent alone is left to PDEATHSIG."""
    if "LOCAL_RANK" not in os.environ or not ancestors:
        return
    import itertools

    import psutil

    pids = [ancestors[0][0], *(pid for pid, _ in itertools.takewhile(lambda a: _is_launcher(a[1]), ancestors[1:]))]

    def intact():
        with contextlib.suppress(psutil.Error):
            chain = itertools.pairwise([os.getpid(), *pids])  # (child, parent) up the launcher chain
            return all(psutil.Process(child).ppid() == parent for child, parent in chain)
        return False

    if not intact():
        _on_signal(signal.SIGTERM, None)
    if len(pids) < 2:
        return

    def watch():
        while intact():
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


# --- processes that run launcher jobs -------------------------------------------------------------
def relay(early=()):
    """In the main thread of a process that runs launcher jobs: record a stop signal and pass it on to the
    ranks of every running job (`job`), now and as they start. `early`: signals recorded before (then no job
    starts)."""
    _state["mode"] = "relay"
    for s in SIGNALS:
        signal.signal(s, _on_relay)
    for s in early:
        _on_relay(s, None)


def _on_relay(signum, _frame):
    first = not _received
    _received.append(signum)
    if first:
        threading.Thread(target=_pass_on, daemon=True, name="stop-relay").start()


def received():
    """The first stop signal this process received, by name, else None."""
    return _name(_received[0]) if _received else None


def _is_rank(proc):
    """A process running a launchers/*.py script directly (`python [-u] launchers/X.py`), not a wrapper."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for arg in proc.cmdline()[1:]:
            if arg in ("-m", "-c"):
                return False
            if not arg.startswith("-"):
                return arg.endswith(".py") and os.path.basename(os.path.dirname(arg)) == "launchers"
    return False


def _pass_on():
    """Until the process exits: signal every rank of every running job once (a job without ranks, e.g.
    `babylm-ds prepare`, is signalled itself; a launcher wrapper never is)."""
    import psutil

    while True:
        with _lock:
            for pid in _jobs:
                with contextlib.suppress(psutil.Error):
                    top = psutil.Process(pid)
                    _jobs[pid] = tree = [top, *top.children(recursive=True)]
                    for p in [p for p in tree if _is_rank(p)] or ([] if _is_launcher(top.cmdline()) else [top]):
                        if (key := (p.pid, p.create_time())) not in _signalled:
                            _signalled.add(key)
                            p.send_signal(_received[0])
        time.sleep(0.2)


@contextlib.contextmanager
def job(proc):
    """Around a running launcher job (a Popen): its ranks get the stop signals passed on; on leaving, once a
    stop was passed on, wait until every process of its tree has exited (ranks may outlive their wrapper)."""
    import psutil

    with _lock:
        _jobs[proc.pid] = []
    try:
        yield
    finally:
        with _lock:
            tree = _jobs.pop(proc.pid, [])
        if _received:
            psutil.wait_procs([p for p in tree if p.pid != proc.pid])

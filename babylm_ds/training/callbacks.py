"""What runs around the optimizer steps of `Trainer.train`, as small named callbacks.

`Trainer.train` calls each hook of every callback, in list order: `on_train_start`, then per step
`on_step_start` and `on_step_end`, `on_epoch_end` at each epoch end (and first of all when resumed at one:
its checkpoint came before the evaluation), `on_train_end` once the loop is over. The callbacks share the
loop's `TrainState`; one that sets `state.stop` (e.g. `StopOnSignal`) ends the loop after this step:
`on_train_end` still runs (a checkpoint is saved) and the run is not exported. `default_callbacks(cfg)` is
the list a launcher runs; append to it for more.
"""
import math
import os
import time
from dataclasses import dataclass, field

from babylm_ds.training import preempt
from babylm_ds.utils.cli import EchoedError

# Fault injection for the fault suite (benchmarks/faults.py) and tests: "rank:step" makes that rank die
# (os._exit(1)) once `step` optimizer steps are done; "rank:step:hang" makes it stall instead (the others then
# fail after --dist-timeout); "rank:step:nan" makes its next loss NaN (the run then stops as diverged).
FAULT_ENV = "BABYLM_DS_FAULT_AT_STEP"


@dataclass
class TrainState:
    """The training loop's state, shared by the callbacks."""
    step: int = 0  # optimizer steps done
    loss: float = float("nan")  # loss of the last step, averaged over micro-steps and ranks
    metrics: dict = field(default_factory=dict)  # the loss function's extra metrics of the last step
    lr: float = float("nan")  # lr of the last step
    grad_norm: float | None = None  # global gradient norm of the last step (None where DeepSpeed has none)
    tokens_per_s: float = 0.0  # of the last step, all ranks
    tokens: int = 0  # trained in this process, all ranks
    seconds: float = 0.0  # spent in training steps in this process
    dev_loss: float | None = None  # the last dev loss
    last_dev: int = -1  # step of the last dev loss
    last_save: int = 0  # step of the last checkpoint (the resumed one at start; 0: none)
    poison: bool = False  # make the coming step's loss NaN (fault injection)
    stop: str | None = None  # why the run stops early (set by a callback); None: it runs to the end


class Callback:
    """Hooks of `Trainer.train`, no-ops by default; `t` is the Trainer, `s` its TrainState."""

    def on_train_start(self, t, s):
        pass

    def on_step_start(self, t, s):
        pass

    def on_step_end(self, t, s):
        pass

    def on_epoch_end(self, t, s):
        pass

    def on_train_end(self, t, s):
        pass


class FaultInjection(Callback):
    """The fault suite's hook (FAULT_ENV): die, hang or poison the loss on one rank at one step."""

    def __init__(self, spec):
        rank, step, *mode = spec.split(":")
        self.at, self.mode = (int(rank), int(step)), mode

    @classmethod
    def from_env(cls):
        return cls(os.environ[FAULT_ENV]) if os.environ.get(FAULT_ENV) else None

    def on_step_start(self, t, s):
        s.poison = False
        if (t.rank, s.step) != self.at:
            return
        if self.mode == ["nan"]:
            s.poison = True
            return
        if self.mode == ["hang"]:
            time.sleep(1e9)
        os._exit(1)


def divergence_message(t, s):
    kept = "no checkpoint yet; lower --lr or --clip"
    if s.last_save:
        kept = (f"the last good checkpoint {t.ckpt_dir}/step{s.last_save} is untouched; lower --lr or --clip and "
                "rerun with --resume")
    return (f"step {s.step}: loss {s.loss:g}, gradient norm {float(s.grad_norm or 0):g}: training diverged, stopped "
            f"without saving or exporting ({kept})")


class DivergenceGuard(Callback):
    """A non-finite loss or gradient norm stops the run before anything is logged, saved or exported. Every
    rank sees the same (all-reduced) values: rank 0 says it, the others stop quietly."""

    def on_step_end(self, t, s):
        if not math.isfinite(s.loss) or s.grad_norm is not None and not math.isfinite(float(s.grad_norm)):
            raise (ValueError if t.rank == 0 else EchoedError)(divergence_message(t, s))


class LogTrain(Callback):
    """Each step's loss, lr, throughput, gradient norm and metrics: metrics.jsonl, TensorBoard, the progress bar."""

    def __init__(self, every):
        self.every = every

    def on_step_end(self, t, s):
        record = {"loss": s.loss, "lr": s.lr, "tokens_per_s": s.tokens_per_s,
                  **({"grad_norm": float(s.grad_norm)} if s.grad_norm is not None else {}), **s.metrics}
        t.log(s.step, record, "train/")
        t.bar.update(1)
        if s.step % self.every == 0:
            t.bar.set_postfix(loss=f"{s.loss:.4f}", lr=f"{s.lr:.2e}")


class DevLoss(Callback):
    """Dev loss every `every` steps (0: never mid-epoch), at each epoch end and at the end (once per step)."""

    def __init__(self, every):
        self.every = every

    def _dev(self, t, s):
        if s.last_dev != s.step:
            s.dev_loss, s.last_dev = t.dev(s.step), s.step

    def on_step_end(self, t, s):
        if self.every and s.step % self.every == 0:
            self._dev(t, s)

    def on_epoch_end(self, t, s):
        self._dev(t, s)

    def on_train_end(self, t, s):
        if s.stop is None:
            self._dev(t, s)


class ZeroShot(Callback):
    """Zero-shot benchmarks (comma list `tasks`, `limit` items per paradigm) at each epoch end."""

    def __init__(self, tasks, limit):
        self.tasks, self.limit = [x.strip() for x in tasks.split(",") if x.strip()], limit

    def on_epoch_end(self, t, s):
        t.evaluate_zeroshot(s.step, self.tasks, self.limit)


class Checkpoint(Callback):
    """A sealed checkpoint every `every` steps (0: none mid-run) and at the end, early stops included."""

    def __init__(self, every):
        self.every = every

    def _save(self, t, s):
        if s.last_save != s.step:
            t.save(s.step)
            s.last_save = s.step

    def on_step_end(self, t, s):
        if self.every and s.step % self.every == 0:
            self._save(t, s)

    def on_train_end(self, t, s):
        self._save(t, s)


class StopOnSignal(Callback):
    """A stop signal (SIGTERM, SIGUSR1: `training.preempt`) on any rank ends the run at the end of this step on
    every rank: checkpointed (by `Checkpoint`, which must come before this callback), then the process exits
    with `preempt.EXIT_STOPPED` and one line. `preempt.requested` is a collective: every rank calls it each step."""

    def on_train_start(self, t, s):
        preempt.arm()

    def on_step_end(self, t, s):
        if signame := preempt.requested(s.step):
            s.stop = signame

    def on_train_end(self, t, s):
        preempt.disarm()  # the run is finishing (final save, export): signals are ignored from here
        if s.stop not in preempt.SIGNAL_NAMES:
            return
        saved = (f"checkpoint step{s.step} saved in {t.ckpt_dir}; rerun with --resume" if s.last_save == s.step
                 else "no checkpoint saved")
        if t.tb is not None:
            t.tb.close()
        preempt.stop(s.stop, f"at step {s.step}; {saved}", t.rank)


def default_callbacks(cfg):
    """The callbacks of a training run of Config `cfg`, in the order they run."""
    e = cfg.evaluation
    callbacks = [FaultInjection.from_env(), DivergenceGuard(), LogTrain(cfg.run.log_every), DevLoss(e.eval_every),
                 ZeroShot(e.epoch_tasks, e.epoch_limit) if e.epoch_tasks else None, Checkpoint(cfg.run.save_every),
                 StopOnSignal()]
    return [c for c in callbacks if c is not None]

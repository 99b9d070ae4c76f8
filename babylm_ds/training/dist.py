"""Process-group setup (ranks die with their launcher, no /dev/shm leftovers), errors agreed on by all
ranks, and ZeRO-aware gathering of full parameters."""
import contextlib
import os
import socket
import sys
import threading
import time
from datetime import timedelta

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import safe_get_full_fp32_param

from babylm_ds.utils.cli import ANTICIPATED, EchoedError, die_with_launcher, one_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unlink_shm_buffer(rank):
    """DeepSpeed's CPU all-reduce maps one /dev/shm buffer per rank (csrc/cpu/comm/shm.cpp, 66 MiB) and
    never unlinks it. Once every rank has mapped every buffer (after the first barrier) each rank
    unlinks its own name: the mappings stay valid and even a killed job leaves nothing behind."""
    name = "deepspeed_allreduce_buffer_{}_{}_{}_{}".format(
        os.getuid(), os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), rank)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join("/dev/shm", name))


def init_distributed(timeout_s=1800.0):
    """Join (or, for a plain `python` run, create) the process group; returns (rank, world_size).

    A collective that waits on a dead rank fails after `timeout_s` seconds instead of hanging.
    DeepSpeed's compiled ops are built in the project's .torch_extensions unless TORCH_EXTENSIONS_DIR
    says otherwise."""
    if not dist.is_initialized():
        die_with_launcher()
        if os.path.isfile(os.path.join(ROOT, "setup.py")):  # a source checkout
            os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".torch_extensions"))
        if not any(k in os.environ for k in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
        deepspeed.init_distributed(timeout=timedelta(seconds=timeout_s), verbose=False)
        if get_accelerator().device_name() != "cpu":
            get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", 0)))
        else:
            dist.barrier()
            unlink_shm_buffer(dist.get_rank())
    return dist.get_rank(), dist.get_world_size()


def agree(fn):
    """Run `fn()` on every rank and return its result. If it raised an anticipated error (ValueError,
    OSError) on any rank, every rank raises the first such message, so no rank goes on to wait for peers
    that gave up: that rank as ValueError, the others as EchoedError (the message is printed once).
    Collective."""
    try:
        result, error = fn(), None
    except ANTICIPATED as e:
        result, error = None, one_line(e)
    rank = first = 0
    if dist.is_initialized() and dist.get_world_size() > 1:
        rank, errors = dist.get_rank(), [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        first, error = next(((i, e) for i, e in enumerate(errors) if e), (0, None))
    if error:
        raise (ValueError if first == rank else EchoedError)(error)
    return result


class Watchdog:
    """Ends the process (exit code 1) when `beat()` has not been called for `timeout_s` seconds, so a rank
    stuck in a collective with a dead or stalled peer fails instead of hanging. Needed beside the
    process-group timeout because DeepSpeed's own groups (ZeRO data-parallel) use torch's default one."""

    def __init__(self, timeout_s):
        self.timeout_s, self.last, self.done = timeout_s, time.monotonic(), threading.Event()

    def start(self):
        self.beat()
        threading.Thread(target=self._watch, daemon=True).start()

    def beat(self):
        self.last = time.monotonic()

    def stop(self):
        self.done.set()

    def _watch(self):
        while not self.done.wait(min(5.0, self.timeout_s / 4)):
            if time.monotonic() - self.last > self.timeout_s:
                print(f"\n{os.path.basename(sys.argv[0])}: error: rank {dist.get_rank()} made no progress for "
                      f"{self.timeout_s:.0f}s (--dist-timeout); a rank died or stalled, exiting", file=sys.stderr,
                      flush=True)  # on a line of its own, after a progress bar
                os._exit(1)


def gather_state_dict(module):
    """Full fp32 state dict of a DeepSpeed engine's module (any ZeRO stage; the optimizer's fp32
    master weights where they exist). Collective: every rank must call it; rank 0 gets the dict on
    CPU, the others None. Tied parameters appear under each of their names; names starting with a
    prefix in `module.export_exclude` (training-only submodules) are left out."""
    rank, full, state = dist.get_rank(), {}, {}
    exclude = tuple(getattr(module, "export_exclude", ()))
    for name, tensor in module.state_dict(keep_vars=True).items():
        if exclude and name.startswith(exclude):
            continue
        if id(tensor) not in full:
            if isinstance(tensor, torch.nn.Parameter):
                value = safe_get_full_fp32_param(tensor) if tensor.requires_grad else None
                if value is None:
                    with deepspeed.zero.GatheredParameters([tensor]):
                        value = tensor.data.float().clone()
            else:
                value = tensor.data.clone()
            full[id(tensor)] = value.cpu() if rank == 0 else None
        state[name] = full[id(tensor)]
    return state if rank == 0 else None

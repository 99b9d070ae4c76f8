"""Distil teachers into a student with DeepSpeed ZeRO: loss = α·CE + (1−α)·T²·KL(teacher_T ‖ student_T).

  deepspeed launchers/distill.py --ds_config ds_configs/zero2.json --model babyhgrn-360m \\
      --teacher-cache CACHE --data DATA --out OUT                       (offline, from cache_logits.py)
  deepspeed launchers/distill.py --preset babyllama-ensemble --teachers LLAMA/final GPT2/final ...  (online)

Offline targets are the cached top-k + tail; online teachers run frozen in this process (sharded under
ZeRO-3) and allow deep supervision (--beta). The library code is babylm_ds.training.distill.
"""
import _preamble  # first: see launchers/_preamble.py

# isort: split
import sys

from babylm_ds.config import parse
from babylm_ds.training import preempt
from babylm_ds.utils.cli import run_cli


def main(argv=None):
    cfg = parse("distill", argv, __doc__)
    from babylm_ds.training.distill import distill

    distill(cfg)
    return 0


if __name__ == "__main__":
    preempt.install(_preamble.STOPS, _preamble.ANCESTORS)  # a stop signal saves and stops (training.preempt)
    sys.exit(run_cli(main))

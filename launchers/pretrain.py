"""Pretrain a causal LM from scratch with DeepSpeed ZeRO.

  deepspeed --num_gpus 2 launchers/pretrain.py --model llama-360m --data DIR --ds_config ds_configs/zero2.json --out OUT
  torchrun --nproc_per_node 2 launchers/pretrain.py ...      python launchers/pretrain.py ...  (one process)
"""
import _preamble  # first: see launchers/_preamble.py

# isort: split
import sys

from babylm_ds.config import parse
from babylm_ds.training import preempt
from babylm_ds.utils.cli import run_cli


def main(argv=None):
    cfg = parse("pretrain", argv, __doc__)
    from babylm_ds.training.pretrain import pretrain

    pretrain(cfg)
    return 0


if __name__ == "__main__":
    preempt.install(_preamble.STOPS, _preamble.ANCESTORS)  # a stop signal saves and stops (training.preempt)
    sys.exit(run_cli(main))

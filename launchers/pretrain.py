"""Pretrain a causal LM from scratch with DeepSpeed ZeRO.

  deepspeed --num_gpus 2 launchers/pretrain.py --model llama-360m --data DIR --ds_config ds_configs/zero2.json --out OUT
  torchrun --nproc_per_node 2 launchers/pretrain.py ...      python launchers/pretrain.py ...  (one process)
"""
import argparse
import os
import signal
import sys

LAUNCHER = os.getppid()  # first thing: a launcher killed while this rank imports must still take it down
STOPS = []  # preempt: SIGTERM/SIGUSR1 that come while importing; then preempt.install handles them
if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(_sig, lambda signum, _: STOPS.append(signum))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# DeepSpeed compiles its CPU ops (≈3-4 min, once) into TORCH_EXTENSIONS_DIR: keep them in the project.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".torch_extensions"))
from babylm_ds.utils.cli import die_with_launcher, run_cli  # noqa: E402

die_with_launcher(LAUNCHER)  # before the slow imports: a rank must not outlive its launcher

from babylm_ds.training import add_train_args, preempt  # noqa: E402


def main(argv=None):
    parser = add_train_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--model-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model config overrides, e.g. hidden_size=256 num_hidden_layers=4")
    args = parser.parse_args(argv)
    import torch

    from babylm_ds.data import PackedDataset, load_meta, load_tokenizer
    from babylm_ds.models import check_model_arg, model_from_arg, parse_overrides
    from babylm_ds.training import Trainer, init_distributed
    from babylm_ds.training.guard import check_train_args, start_run

    check_train_args(args)
    overrides = parse_overrides(args.model_config)
    check_model_arg(args.model, load_meta(args.data)["vocab_size"], overrides, verify=not args.no_verify)
    rank, world = init_distributed(args.dist_timeout)
    meta, tag = start_run(args, rank, world)
    tokenizer = load_tokenizer(args.data)
    torch.manual_seed(args.seed)  # identical init on every rank
    model = model_from_arg(args.model, meta["vocab_size"], overrides)
    trainer = Trainer(args, model, PackedDataset(args.data, "train"), PackedDataset(args.data, "dev"), tokenizer)
    summary = trainer.train(tag)
    if rank == 0:
        print(f"done: {summary}")
    return 0


if __name__ == "__main__":
    preempt.install(STOPS)  # preempt: a stop signal saves and stops (training.preempt)
    sys.exit(run_cli(main))

"""Pretrain a causal LM from scratch with DeepSpeed ZeRO.

  deepspeed --num_gpus 2 launchers/pretrain.py --model llama-360m --data DIR --ds_config ds_configs/zero2.json --out OUT
  torchrun --nproc_per_node 2 launchers/pretrain.py ...      python launchers/pretrain.py ...  (one process)
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# DeepSpeed compiles its CPU ops (≈3-4 min, once) into TORCH_EXTENSIONS_DIR: keep them in the project.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".torch_extensions"))

from babylm_ds.training import add_train_args  # noqa: E402


def main(argv=None):
    parser = add_train_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--model-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model config overrides, e.g. hidden_size=256 num_hidden_layers=4")
    args = parser.parse_args(argv)
    import torch

    from babylm_ds.data import PackedDataset, load_meta, load_tokenizer
    from babylm_ds.models import model_from_arg, parse_overrides
    from babylm_ds.training import Trainer, init_distributed

    rank, _ = init_distributed(args.dist_timeout)
    try:
        meta, tokenizer = load_meta(args.data), load_tokenizer(args.data)
        torch.manual_seed(args.seed)  # identical init on every rank
        model = model_from_arg(args.model, meta["vocab_size"], parse_overrides(args.model_config))
        trainer = Trainer(args, model, PackedDataset(args.data, "train"), PackedDataset(args.data, "dev"), tokenizer)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    summary = trainer.train()
    if rank == 0:
        print(f"done: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

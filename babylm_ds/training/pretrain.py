"""What `launchers/pretrain.py` runs: check the configuration and the data, build the model, train, export."""
import torch

from babylm_ds.data import PackedDataset, load_meta, load_tokenizer
from babylm_ds.models import check_model_arg, model_from_arg
from babylm_ds.training.dist import init_distributed
from babylm_ds.training.guard import check_train_args, start_run
from babylm_ds.training.trainer import Trainer


def pretrain(cfg, callbacks=None):
    """Train Config `cfg`'s model from scratch (or from its HF dir) on its data; returns the summary.
    `callbacks`: the Trainer's (default `callbacks.default_callbacks(cfg)`)."""
    check_train_args(cfg)
    check_model_arg(cfg.model.name, load_meta(cfg.data.dir)["vocab_size"], cfg.model.config,
                    verify=not cfg.model.no_verify)
    rank, world = init_distributed(cfg.run.dist_timeout)
    meta, tag = start_run(cfg, rank, world)
    tokenizer = load_tokenizer(cfg.data.dir)
    torch.manual_seed(cfg.run.seed)  # identical init on every rank
    model = model_from_arg(cfg.model.name, meta["vocab_size"], cfg.model.config)
    trainer = Trainer(cfg, model, PackedDataset(cfg.data.dir, "train"), PackedDataset(cfg.data.dir, "dev"), tokenizer,
                      callbacks=callbacks)
    summary = trainer.train(tag)
    if rank == 0:
        print(f"done: {summary}")
    return summary

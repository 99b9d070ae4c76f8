"""DeepSpeed ZeRO training: CLI flags, config handling, resumable sampler, the Trainer loop.

The flag and config helpers import no DeepSpeed; the rest is imported on first use, so a launcher's
`--help` does not pay for DeepSpeed.
"""
from babylm_ds.training.args import add_dist_args, add_train_args
from babylm_ds.training.config import build_ds_config

_LAZY = {"gather_state_dict": "dist", "init_distributed": "dist", "ResumableSampler": "sampler",
         "build_scheduler": "schedule", "lr_factor": "schedule", "Trainer": "trainer", "causal_lm_loss": "trainer",
         "collate": "trainer", "export_hf": "trainer"}

__all__ = ["add_dist_args", "add_train_args", "build_ds_config", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"babylm_ds.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

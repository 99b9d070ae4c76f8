"""DeepSpeed ZeRO training: CLI flags, config handling, resumable sampler, the Trainer loop."""
from babylm_ds.training.args import add_dist_args, add_train_args
from babylm_ds.training.config import build_ds_config
from babylm_ds.training.dist import gather_state_dict, init_distributed
from babylm_ds.training.sampler import ResumableSampler
from babylm_ds.training.schedule import build_scheduler, lr_factor
from babylm_ds.training.trainer import Trainer, causal_lm_loss, collate, export_hf

__all__ = ["add_dist_args", "add_train_args", "build_ds_config", "init_distributed", "gather_state_dict", "ResumableSampler",
           "build_scheduler", "lr_factor", "Trainer", "causal_lm_loss", "collate", "export_hf"]

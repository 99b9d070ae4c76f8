"""DeepSpeed config: the JSON file (run.ds_config) filled in from the configuration tree, with consistency checks.

Keys set from the tree (babylm_ds.config; a field left at None keeps the JSON's value, else DEFAULT_CONFIG's):
  train_micro_batch_size_per_gpu <- optim.micro_batch  (--micro-batch)
  gradient_accumulation_steps    <- optim.grad_accum   (--grad-accum)
  gradient_clipping              <- optim.clip         (--clip)
  bf16.enabled                   <- optim.bf16         (--bf16; only switches it on)
  optimizer.params.{lr, betas, weight_decay} <- optim.lr, optim.betas, optim.weight_decay (always, when the
      JSON has an "optimizer" section; otherwise a client torch.optim.AdamW is built from them)
`train_batch_size`, when present, must equal micro * accum * world size. The lr schedule always comes from
the tree (optim.schedule, warmup_steps, min_lr_ratio), so a JSON "scheduler" section is rejected.
"""
import json

from babylm_ds.config import updated

# The DeepSpeed config without --ds_config, and the batch keys of one that lacks them.
DEFAULT_CONFIG = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
                  "zero_optimization": {"stage": 1}}
FROM_TREE = {"train_micro_batch_size_per_gpu": "micro_batch", "gradient_accumulation_steps": "grad_accum",
             "gradient_clipping": "clip"}


def _find_auto(obj, path=""):
    """Dotted path of the first "auto" value in a nested config, or None."""
    if obj == "auto":
        return path
    for key, value in obj.items() if isinstance(obj, dict) else ():
        found = _find_auto(value, f"{path}.{key}" if path else key)
        if found:
            return found
    return None


def read_ds_json(path):
    """The DeepSpeed JSON at `path` (None: DEFAULT_CONFIG), refused if it leaves a value "auto" or has a scheduler."""
    if path is None:
        return json.loads(json.dumps(DEFAULT_CONFIG))
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read DeepSpeed config {path}: {e}") from None
    if (key := _find_auto(cfg)) is not None:
        raise ValueError(f"{path}: '{key}' is \"auto\"; give an explicit value or set it from the CLI")
    if "scheduler" in cfg:
        raise ValueError(f"{path}: remove the \"scheduler\" section; the lr schedule comes from "
                         "--schedule/--warmup-steps/--min-lr-ratio")
    return cfg


def _pick(value, ds, key):
    return value if value is not None else ds.get(key, DEFAULT_CONFIG[key])


def build_ds_config(cfg, world_size):
    """The DeepSpeed config dict of Config `cfg` (see module docstring) on `world_size` ranks."""
    ds, o = read_ds_json(cfg.run.ds_config), cfg.optim
    for key, name in FROM_TREE.items():
        ds[key] = _pick(getattr(o, name), ds, key)
    micro, accum = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    if micro < 1 or accum < 1:
        raise ValueError(f"micro batch ({micro}) and gradient accumulation ({accum}) must be >= 1")
    if "train_batch_size" in ds and ds["train_batch_size"] != micro * accum * world_size:
        raise ValueError(f"train_batch_size={ds['train_batch_size']} in {cfg.run.ds_config} != micro batch {micro} "
                         f"x grad accum {accum} x world size {world_size} = {micro * accum * world_size}; "
                         "fix the config or the --micro-batch/--grad-accum flags")
    ds["train_batch_size"] = micro * accum * world_size
    if o.bf16:
        ds.setdefault("bf16", {})["enabled"] = True
    if "optimizer" in ds:
        ds["optimizer"].setdefault("params", {}).update(lr=o.lr, betas=list(o.betas), weight_decay=o.weight_decay)
    ds.setdefault("steps_per_print", 10**9)
    return ds


def resolve(cfg, ds=None):
    """`cfg` with the fields the DeepSpeed config decides (micro_batch, grad_accum, clip, bf16) filled in from
    `ds` (default: the JSON of run.ds_config)."""
    ds = ds or read_ds_json(cfg.run.ds_config)
    values = {f"optim.{name}": _pick(getattr(cfg.optim, name), ds, key) for key, name in FROM_TREE.items()}
    values["optim.bf16"] = cfg.optim.bf16 or bool(ds.get("bf16", {}).get("enabled"))
    return updated(cfg, values)

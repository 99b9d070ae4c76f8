"""DeepSpeed config: the JSON file filled in from the command line, with consistency checks.

Keys the launcher sets from CLI flags (a flag left unset keeps the JSON value):
  train_micro_batch_size_per_gpu <- --micro-batch   (default 8 when neither gives it)
  gradient_accumulation_steps    <- --grad-accum    (default 1)
  gradient_clipping              <- --clip          (default 1.0)
  bf16.enabled                   <- --bf16
  optimizer.params.{lr, betas, weight_decay} <- --lr, --betas, --weight-decay (always, when the JSON
      has an "optimizer" section; otherwise a client torch.optim.AdamW is built from these flags)
`train_batch_size`, when present, must equal micro * accum * world size. The lr schedule always
comes from --schedule/--warmup-steps/--min-lr-ratio, so a JSON "scheduler" section is rejected.
"""
import json

DEFAULT_CONFIG = {"zero_optimization": {"stage": 1}}


def _find_auto(obj, path=""):
    """Dotted path of the first "auto" value in a nested config, or None."""
    if obj == "auto":
        return path
    for key, value in obj.items() if isinstance(obj, dict) else ():
        found = _find_auto(value, f"{path}.{key}" if path else key)
        if found:
            return found
    return None


def build_ds_config(args, world_size):
    """Return the DeepSpeed config dict for `args` (see module docstring) on `world_size` ranks."""
    if args.ds_config:
        try:
            with open(args.ds_config) as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read DeepSpeed config {args.ds_config}: {e}") from None
    else:
        cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    if (key := _find_auto(cfg)) is not None:
        raise ValueError(f"{args.ds_config}: '{key}' is \"auto\"; give an explicit value or set it from the CLI")
    if "scheduler" in cfg:
        raise ValueError(f"{args.ds_config}: remove the \"scheduler\" section; the lr schedule comes from "
                         "--schedule/--warmup-steps/--min-lr-ratio")
    for key, flag, default in (("train_micro_batch_size_per_gpu", "micro_batch", 8),
                               ("gradient_accumulation_steps", "grad_accum", 1),
                               ("gradient_clipping", "clip", 1.0)):
        value = getattr(args, flag)
        cfg[key] = value if value is not None else cfg.get(key, default)
    micro, accum = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
    if micro < 1 or accum < 1:
        raise ValueError(f"micro batch ({micro}) and gradient accumulation ({accum}) must be >= 1")
    if "train_batch_size" in cfg and cfg["train_batch_size"] != micro * accum * world_size:
        raise ValueError(f"train_batch_size={cfg['train_batch_size']} in {args.ds_config} != micro batch {micro} "
                         f"x grad accum {accum} x world size {world_size} = {micro * accum * world_size}; "
                         "fix the config or the --micro-batch/--grad-accum flags")
    cfg["train_batch_size"] = micro * accum * world_size
    if args.bf16:
        cfg.setdefault("bf16", {})["enabled"] = True
    if "optimizer" in cfg:
        cfg["optimizer"].setdefault("params", {}).update(
            lr=args.lr, betas=list(args.betas), weight_decay=args.weight_decay)
    cfg.setdefault("steps_per_print", 10**9)
    return cfg

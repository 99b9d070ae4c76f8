"""What `launchers/distill.py` runs: a student trained on teacher targets by the Trainer, with
loss = α·CE + (1−α)·T²·KL(teacher_T ‖ student_T).

Offline targets are the cached top-k + tail (KL over k ids + one tail bucket); online teachers run frozen
in the process (ZeRO-3: sharded by a DeepSpeed engine without optimizer) and also allow deep supervision
(distill.beta): MSE between learned projections of student hidden states and the first teacher's.
Training, checkpoints, exact resume, dev eval, TensorBoard and HF export come from the Trainer; the cache
reader is stateless given a batch's idx, so resume needs nothing more. The recipes `--preset` names are
`babylm_ds.config.PRESETS`.
"""
import torch
import torch.distributed as dist

from babylm_ds.cache import TeacherCache, check_teacher, combined_logits, load_teachers, normalise_weights, teacher_info
from babylm_ds.losses import hidden_mse, kd_loss, kd_loss_full
from babylm_ds.training.config import build_ds_config


def check_distill_args(cfg):
    """ValueError for distillation settings that cannot work together (no file is read)."""
    d = cfg.distill
    if not cfg.model.name:
        raise ValueError("give the student: --model/--student PRESET_OR_DIR, or a --preset")
    if bool(d.teacher_cache) == bool(d.teachers):
        raise ValueError("give the teacher targets: --teacher-cache DIR (offline) or --teachers DIR [DIR ...] "
                         "(online), one of them")
    if d.beta and not d.teachers:
        raise ValueError("--beta (hidden-state supervision) needs online --teachers; a cache holds no hidden states")
    if not 0.0 <= d.alpha <= 1.0 or d.temperature <= 0:
        raise ValueError(f"need 0 <= --alpha <= 1 and --temperature > 0, got {d.alpha}, {d.temperature}")


def parse_layer_map(spec, student_layers, teacher_layers):
    """[(student, teacher)] hidden-state indices of --layer-map (auto: the middle and last layers)."""
    if spec == "auto":
        return [(student_layers // 2, teacher_layers // 2), (student_layers, teacher_layers)]
    try:
        pairs = [tuple(int(x) for x in pair.split(":")) for pair in spec.split(",")]
    except ValueError:
        raise ValueError(f"--layer-map expects S:T[,S:T...], got {spec!r}") from None
    for s, t in pairs:
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise ValueError(f"--layer-map {s}:{t} outside student 0..{student_layers} / teacher 0..{teacher_layers}")
    return pairs


def offline_loss(d, cache):
    """loss_fn(engine, batch) of the Trainer from the cached targets; `d`: Config.distill."""
    def loss_fn(engine, batch):
        ids, logprobs, tail = cache.get(batch["idx"].cpu(), engine.device)
        logits = engine(input_ids=batch["input_ids"]).logits
        loss, ce, kd = kd_loss(logits, ids, logprobs, tail, batch["input_ids"], d.alpha, d.temperature,
                               d.kd_reduction, d.tail_mode)
        return loss, {"ce": ce.item(), "kd": kd.item()}
    return loss_fn


def online_loss(d, teachers, weights, layer_map):
    """loss_fn(engine, batch) of the Trainer from frozen `teachers` (combined with `weights`) run on the batch,
    plus d.beta x hidden-state MSE over `layer_map`; `d`: Config.distill."""
    def loss_fn(engine, batch):
        x = batch["input_ids"]
        if d.beta:
            t_logits, t_hidden = combined_logits(teachers, weights, x, output_hidden_states=True)
        else:
            t_logits = combined_logits(teachers, weights, x)
        out = engine(input_ids=x, output_hidden_states=bool(d.beta))
        loss, ce, kd = kd_loss_full(out.logits, t_logits, x, d.alpha, d.temperature, d.kd_reduction)
        metrics = {"ce": ce.item(), "kd": kd.item()}
        if d.beta:
            hidden = hidden_mse(out.hidden_states, t_hidden[0], engine.module.kd_proj, layer_map)
            loss = loss + d.beta * hidden
            metrics["hidden"] = hidden.item()
        return loss, metrics
    return loss_fn


def shard_teachers(teachers, paths, ds_config):
    """ZeRO-3: wrap each frozen teacher in an optimizer-less DeepSpeed engine (batch sizes and bf16 from the
    student's DeepSpeed config) so its weights are sharded."""
    import deepspeed
    tcfg = {k: ds_config[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                      "train_batch_size")}
    tcfg.update(zero_optimization={"stage": 3}, bf16=ds_config.get("bf16", {"enabled": False}), steps_per_print=10**9)
    engines = [deepspeed.initialize(model=t, config=tcfg)[0] for t in teachers]
    for path, engine in zip(paths, engines, strict=True):
        engine.eval()  # DeepSpeedEngine.eval() returns None
        held = sum(p.ds_tensor.numel() for p in engine.module.parameters())
        total = sum(p.ds_numel for p in engine.module.parameters())
        print(f"[rank {dist.get_rank()}] teacher {path}: ZeRO-3 sharded, this rank holds {held:,} of {total:,} "
              "parameters", flush=True)
    return engines


def open_cache(path, meta):
    """The offline cache, refused (ValueError) if its manifest is bad or it was built for other data;
    its shards are hashed later, by `TeacherCache.verify` on every rank."""
    cache = TeacherCache(path)
    cache.check_compatible(meta)
    num_sequences = meta["splits"]["train"]["num_sequences"]
    if len(cache) != num_sequences:
        raise ValueError(f"teacher cache {path} has {len(cache)} sequences, the training set {num_sequences}")
    return cache


def online_teachers(cfg, student, world):
    """(teachers, frozen modules for the Trainer, weights, layer map): the frozen teachers as frozen modules,
    or ZeRO-3-sharded engines; adds the --beta projections to `student`."""
    d = cfg.distill
    weights = normalise_weights(d.teacher_weights, len(d.teachers))
    teachers = load_teachers(d.teachers, student.config.vocab_size)
    layer_map = []
    if d.beta:
        s_cfg, t_cfg = student.config, teachers[0].config
        layer_map = parse_layer_map(d.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        student.kd_proj = torch.nn.ModuleList(torch.nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size, bias=False)
                                              for _ in layer_map)
        student.export_exclude = ("kd_proj.",)  # trained with the student, not part of the exported model
    ds_config = build_ds_config(cfg, world)
    if ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
        return shard_teachers(teachers, d.teachers, ds_config), (), weights, layer_map
    return teachers, teachers, weights, layer_map


def card_facts(d, cache):
    """Model-card facts of the distillation: the teachers (from the cache's manifest, or the online dirs)."""
    if cache is not None:
        teachers, k = cache.config["teachers"], cache.config["k"]
    else:
        weights = normalise_weights(d.teacher_weights, len(d.teachers))
        teachers, k = [teacher_info(p, w) for p, w in zip(d.teachers, weights, strict=True)], None
    return {"distillation": {"teachers": [{key: t[key] for key in ("name", "model_type", "weight")} for t in teachers],
                             "k": k, "alpha": d.alpha, "temperature": d.temperature}}


def distill(cfg):
    """Distil Config `cfg`'s teachers (cache or online) into its student; returns the summary."""
    check_distill_args(cfg)  # before DeepSpeed is imported
    from babylm_ds.data import PackedDataset, load_meta, load_tokenizer
    from babylm_ds.models import check_model_arg, model_from_arg
    from babylm_ds.training.dist import agree, init_distributed
    from babylm_ds.training.guard import check_train_args, start_run
    from babylm_ds.training.trainer import Trainer

    check_train_args(cfg)
    d, meta = cfg.distill, load_meta(cfg.data.dir)
    check_model_arg(cfg.model.name, meta["vocab_size"], cfg.model.config, verify=not cfg.model.no_verify)
    cache = open_cache(d.teacher_cache, meta) if d.teacher_cache else None
    for path in d.teachers or ():
        check_teacher(path, meta, verify=not cfg.model.no_verify)
    rank, world = init_distributed(cfg.run.dist_timeout)
    meta, tag = start_run(cfg, rank, world)
    if cache is not None:
        agree(lambda: cache.verify(rank, world, progress=rank == 0))
    train_ds, dev_ds = PackedDataset(cfg.data.dir, "train"), PackedDataset(cfg.data.dir, "dev")
    torch.manual_seed(cfg.run.seed)  # identical student init on every rank
    student = model_from_arg(cfg.model.name, meta["vocab_size"], cfg.model.config)
    if cache is not None:
        loss_fn, frozen = offline_loss(d, cache), ()
    else:
        teachers, frozen, weights, layer_map = online_teachers(cfg, student, world)
        loss_fn = online_loss(d, teachers, weights, layer_map)
    summary = Trainer(cfg, student, train_ds, dev_ds, load_tokenizer(cfg.data.dir), loss_fn, frozen,
                      card_facts(d, cache), command="distill").train(tag)
    if rank == 0:
        print(f"done: {summary}")
    return summary

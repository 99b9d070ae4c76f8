"""Distil teachers into a student with DeepSpeed ZeRO: loss = α·CE + (1−α)·T²·KL(teacher_T ‖ student_T).

  deepspeed launchers/distill.py --ds_config ds_configs/zero2.json --model babyhgrn-360m \\
      --teacher-cache CACHE --data DATA --out OUT                       (offline, from cache_logits.py)
  deepspeed launchers/distill.py --preset babyllama-ensemble --teachers LLAMA/final GPT2/final ...  (online)

Offline targets are the cached top-k + tail (KL over k ids + one tail bucket); online teachers run
frozen in this process (ZeRO-3: sharded by a DeepSpeed engine without optimizer) and also allow
deep supervision (--beta): MSE between learned projections of student hidden states and the first
teacher's. Training, checkpoints, exact --resume, dev eval, TensorBoard and HF export come from
babylm_ds.training.Trainer; the cache reader is stateless given a batch's idx, so resume needs nothing more.
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

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from babylm_ds.cache import (TeacherCache, check_teacher, combined_logits, load_teachers,  # noqa: E402
                             normalise_weights, teacher_info)
from babylm_ds.losses import TAIL_MODES, hidden_mse, kd_loss, kd_loss_full  # noqa: E402
from babylm_ds.models import check_model_arg, model_from_arg, parse_overrides  # noqa: E402
from babylm_ds.training import add_train_args, build_ds_config, preempt  # noqa: E402

# Defaults a preset fills in (flags still override). The teachers (trained HF dirs of the model presets
# named in each comment) come from --teachers or are baked into --teacher-cache.
PRESETS = {
    # BabyLlama (Timiryasov & Tastet 2023): Llama-360M + GPT2-705M ensemble → Llama-58M, 6 epochs, lr 2.5e-4,
    # batch 32, 200 warmup steps, cosine, wd 0.1, α 0.5, T 2, KLDivLoss(batchmean).
    "babyllama-ensemble": dict(model="babyllama-58m", alpha=0.5, temperature=2.0, kd_reduction="batchmean",
                               lr=2.5e-4, micro_batch=32, warmup_steps=200, schedule="cosine", epochs=6.0,
                               weight_decay=0.1),
    "babyllama-ensemble-tiny": dict(model="llama-tiny", alpha=0.5, temperature=2.0, kd_reduction="batchmean",
                                    lr=1e-3, micro_batch=8, warmup_steps=10, schedule="cosine", epochs=1.0),
    # BabyHGRN: a trained BabyHGRN teacher distilled into a fresh student of the same size.
    "self-hgrn": dict(model="babyhgrn-360m", alpha=0.5, temperature=2.0, kd_reduction="token", lr=3e-4,
                      micro_batch=32, warmup_steps=200, schedule="cosine", epochs=6.0),
    "self-hgrn-tiny": dict(model="babyhgrn-tiny", alpha=0.5, temperature=2.0, kd_reduction="token", lr=1e-3,
                           micro_batch=8, warmup_steps=10, schedule="cosine", epochs=1.0),
}


def build_parser(preset=None):
    p = add_train_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    next(a for a in p._actions if a.dest == "model").required = False  # a --preset may name the student
    g = p.add_argument_group("distillation")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None, help="fill defaults for a known recipe")
    g.add_argument("--student", dest="model", help="alias of --model: student preset or HF dir")
    g.add_argument("--model-config", nargs="*", default=[], metavar="KEY=VALUE", help="student config overrides")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--teacher-cache", default=None, help="offline targets: a cache dir from cache_logits.py")
    src.add_argument("--teachers", nargs="+", default=None, help="online targets: teacher HF dirs, run frozen here")
    g.add_argument("--teacher-weights", type=float, nargs="+", default=None,
                   help="online: weights of the teachers' raw logits (default equal)")
    g.add_argument("--alpha", type=float, default=0.5, help="weight of CE; KD gets 1 − α")
    g.add_argument("--temperature", type=float, default=2.0)
    g.add_argument("--kd-reduction", choices=("token", "batchmean"), default="token",
                   help="token: KL averaged per token; batchmean: summed over tokens / batch size (BabyLlama)")
    g.add_argument("--tail-mode", choices=TAIL_MODES, default="uniform",
                   help="offline: how the cached tail bucket is tempered (see babylm_ds.losses.kd)")
    g.add_argument("--beta", type=float, default=0.0, help="online: weight of hidden-state MSE (deep supervision)")
    g.add_argument("--layer-map", default="auto",
                   help="online: student:teacher hidden-state indices (0 = embeddings), e.g. 2:6,4:12; "
                        "auto = middle and last layers")
    if preset:
        p.set_defaults(**PRESETS[preset])
    return p


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    args = build_parser(pre.parse_known_args(argv)[0].preset).parse_args(argv)
    if not args.model:
        raise SystemExit("give the student: --model/--student PRESET_OR_DIR, or a --preset")
    if not (args.teacher_cache or args.teachers):
        raise SystemExit("give the teacher targets: --teacher-cache DIR (offline) or --teachers DIR [DIR ...] (online)")
    if args.beta and not args.teachers:
        raise SystemExit("--beta (hidden-state supervision) needs online --teachers; a cache holds no hidden states")
    if not 0.0 <= args.alpha <= 1.0 or args.temperature <= 0:
        raise SystemExit(f"need 0 <= --alpha <= 1 and --temperature > 0, got {args.alpha}, {args.temperature}")
    return args


def parse_layer_map(spec, student_layers, teacher_layers):
    if spec == "auto":
        return [(student_layers // 2, teacher_layers // 2), (student_layers, teacher_layers)]
    try:
        pairs = [tuple(int(x) for x in pair.split(":")) for pair in spec.split(",")]
    except ValueError:
        raise SystemExit(f"--layer-map expects S:T[,S:T...], got {spec!r}") from None
    for s, t in pairs:
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise SystemExit(f"--layer-map {s}:{t} outside student 0..{student_layers} / teacher 0..{teacher_layers}")
    return pairs


def offline_loss(args, cache):
    def loss_fn(engine, batch):
        ids, logprobs, tail = cache.get(batch["idx"].cpu(), engine.device)
        logits = engine(input_ids=batch["input_ids"]).logits
        loss, ce, kd = kd_loss(logits, ids, logprobs, tail, batch["input_ids"], args.alpha, args.temperature,
                               args.kd_reduction, args.tail_mode)
        return loss, {"ce": ce.item(), "kd": kd.item()}
    return loss_fn


def online_loss(args, teachers, weights, layer_map):
    def loss_fn(engine, batch):
        x = batch["input_ids"]
        if args.beta:
            t_logits, t_hidden = combined_logits(teachers, weights, x, output_hidden_states=True)
        else:
            t_logits = combined_logits(teachers, weights, x)
        out = engine(input_ids=x, output_hidden_states=bool(args.beta))
        loss, ce, kd = kd_loss_full(out.logits, t_logits, x, args.alpha, args.temperature, args.kd_reduction)
        metrics = {"ce": ce.item(), "kd": kd.item()}
        if args.beta:
            hidden = hidden_mse(out.hidden_states, t_hidden[0], engine.module.kd_proj, layer_map)
            loss = loss + args.beta * hidden
            metrics["hidden"] = hidden.item()
        return loss, metrics
    return loss_fn


def shard_teachers(teachers, args, cfg):
    """ZeRO-3: wrap each frozen teacher in an optimizer-less DeepSpeed engine (batch sizes and bf16 from
    the student's DeepSpeed config `cfg`) so its weights are sharded."""
    import deepspeed
    tcfg = {k: cfg[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")}
    tcfg.update(zero_optimization={"stage": 3}, bf16=cfg.get("bf16", {"enabled": False}), steps_per_print=10**9)
    engines = [deepspeed.initialize(model=t, config=tcfg)[0] for t in teachers]
    for path, engine in zip(args.teachers, engines):
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


def online_teachers(args, student, world):
    """Frozen teachers (as frozen modules, or ZeRO-3-sharded engines) + loss; adds --beta projections."""
    weights = normalise_weights(args.teacher_weights, len(args.teachers))
    teachers = load_teachers(args.teachers, student.config.vocab_size)
    layer_map = []
    if args.beta:
        s_cfg, t_cfg = student.config, teachers[0].config
        layer_map = parse_layer_map(args.layer_map, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        student.kd_proj = torch.nn.ModuleList(torch.nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size, bias=False)
                                              for _ in layer_map)
        student.export_exclude = ("kd_proj.",)  # trained with the student, not part of the exported model
    cfg = build_ds_config(args, world)
    if cfg.get("zero_optimization", {}).get("stage", 0) == 3:
        return shard_teachers(teachers, args, cfg), (), weights, layer_map
    return teachers, teachers, weights, layer_map


def card_facts(args, cache):
    """Model-card facts of the distillation: the teachers (from the cache's manifest, or the online dirs)."""
    if cache is not None:
        teachers, k = cache.config["teachers"], cache.config["k"]
    else:
        weights = normalise_weights(args.teacher_weights, len(args.teachers))
        teachers, k = [teacher_info(p, w) for p, w in zip(args.teachers, weights)], None
    return {"distillation": {"teachers": [{key: t[key] for key in ("name", "model_type", "weight")} for t in teachers],
                             "k": k, "alpha": args.alpha, "temperature": args.temperature}}


def main(argv=None):
    args = parse_args(argv)
    from babylm_ds.data import PackedDataset, load_meta, load_tokenizer
    from babylm_ds.training import Trainer, init_distributed
    from babylm_ds.training.dist import agree
    from babylm_ds.training.guard import check_train_args, start_run
    check_train_args(args)
    meta, overrides = load_meta(args.data), parse_overrides(args.model_config)
    check_model_arg(args.model, meta["vocab_size"], overrides, verify=not args.no_verify)
    cache = open_cache(args.teacher_cache, meta) if args.teacher_cache else None
    for path in args.teachers or ():
        check_teacher(path, meta, verify=not args.no_verify)
    rank, world = init_distributed(args.dist_timeout)
    meta, tag = start_run(args, rank, world)
    if cache is not None:
        agree(lambda: cache.verify(rank, world, progress=rank == 0))
    train_ds, dev_ds = PackedDataset(args.data, "train"), PackedDataset(args.data, "dev")
    torch.manual_seed(args.seed)  # identical student init on every rank
    student = model_from_arg(args.model, meta["vocab_size"], overrides)
    if cache is not None:
        loss_fn, frozen = offline_loss(args, cache), ()
    else:
        teachers, frozen, weights, layer_map = online_teachers(args, student, world)
        loss_fn = online_loss(args, teachers, weights, layer_map)
    summary = Trainer(args, student, train_ds, dev_ds, load_tokenizer(args.data), loss_fn, frozen,
                      card_facts(args, cache)).train(tag)
    if rank == 0:
        print(f"done: {summary}")
    return 0


if __name__ == "__main__":
    preempt.install(STOPS)  # preempt: a stop signal saves and stops (training.preempt)
    sys.exit(run_cli(main))

"""Run trained teachers once over the packed training set and cache their top-k + tail per token.

    deepspeed launchers/cache_logits.py --data DATA --teachers RUN1/final RUN2/final --out CACHE
    python launchers/cache_logits.py ...          (one process)

Re-running the same command resumes: verified shards are kept, anything else is redone.
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

from babylm_ds.training import preempt  # noqa: E402
from babylm_ds.models.manifest import add_verify_arg  # noqa: E402
from babylm_ds.training.args import add_dist_args  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data dir (babylm-ds prepare)")
    p.add_argument("--teachers", nargs="+", required=True, help="HF model dirs (e.g. a pretraining run's OUT/final)")
    p.add_argument("--teacher-weights", type=float, nargs="+", default=None,
                   help="weights of the teachers' raw logits in the combination (default: equal, as BabyLlama)")
    p.add_argument("--out", required=True, help="cache dir (a finished cache of other settings is refused)")
    p.add_argument("--force", action="store_true", help="delete a finished cache in --out and rebuild it")
    p.add_argument("--k", type=int, default=64, help="top-k ids kept per token")
    p.add_argument("--shard-size", type=int, default=256, help="sequences per shard file")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per teacher forward")
    p.add_argument("--logprob-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--tail-dtype", choices=("float16", "float32"), default="float32")
    p.add_argument("--teacher-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--kl-sample", type=int, default=16, help="sequences for the KL(full ‖ cached) report")
    p.add_argument("--kl-temperature", type=float, default=2.0, help="also report the KL error at this temperature")
    add_verify_arg(p)
    add_dist_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from babylm_ds.cache import (check_teacher, claim_cache, combined_logits, load_teachers, normalise_weights,
                                 teacher_info, write_cache)
    from babylm_ds.cache.format import id_dtype
    from babylm_ds.data import PackedDataset, load_meta, verify_data
    from babylm_ds.training.dist import agree, init_distributed

    meta = load_meta(args.data)
    vocab = meta["vocab_size"]
    if not 1 <= args.k <= vocab:
        raise ValueError(f"--k must be in [1, vocab_size={vocab}], got {args.k}")
    if args.shard_size < 1 or args.batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be positive")
    weights = normalise_weights(args.teacher_weights, len(args.teachers))
    for path in args.teachers:
        check_teacher(path, meta, verify=not args.no_verify)
    dataset = PackedDataset(args.data, "train")
    config = {
        "teachers": [teacher_info(path, w) for path, w in zip(args.teachers, weights)],
        "combine": "weighted mean of raw logits",
        "tokenizer_hash": meta["tokenizer_hash"], "fingerprint": meta["fingerprint"], "seq_len": meta["seq_len"],
        "vocab_size": vocab, "split": "train", "num_sequences": len(dataset), "k": args.k,
        "shard_size": args.shard_size, "batch_size": args.batch_size, "teacher_dtype": args.teacher_dtype,
        "dtypes": {"ids": id_dtype(vocab), "logprobs": args.logprob_dtype, "tail": args.tail_dtype},
    }
    rank, world = init_distributed(args.dist_timeout)
    agree(lambda: rank == 0 and claim_cache(args.out, config, args.force))
    agree(lambda: verify_data(args.data, rank, world, progress=rank == 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    teachers = load_teachers(args.teachers, vocab, device, getattr(torch, args.teacher_dtype))

    def teacher_fn(input_ids):
        return combined_logits(teachers, weights, input_ids)

    import torch.distributed as dist
    stopped = {}

    def stop(done, total):  # preempt: a signal on any rank ends every rank at this shard boundary
        if signame := preempt.requested(done):
            stopped.update(signame=signame, detail=f"at a shard boundary; {done} of {total} shards written and kept; "
                                                   "rerun the same command to resume")
        return bool(stopped)

    preempt.arm()
    manifest = write_cache(args.out, dataset, config, teacher_fn, args.batch_size, rank, world, dist.barrier,
                           device, args.kl_sample, args.kl_temperature,
                           log=lambda m: print(m, file=sys.stderr, flush=True), stop=stop)
    if stopped:
        preempt.stop(stopped["signame"], stopped["detail"], rank)
    preempt.disarm()
    if rank == 0:
        s = manifest["stats"]
        print(f"cache {args.out}: {config['num_sequences']} sequences x {config['seq_len']} tokens, k={args.k}, "
              f"{len(manifest['shards'])} shards, {s['bytes_per_token']:.0f} bytes/token")
        for key, v in s.get("kl", {}).items():
            print(f"  mean KL(full teacher || cached top-k+tail) {key}: {v['full']:.5f} nats/token "
                  f"(of which tail approximation {v['tail_approx']:.5f})")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    preempt.install(STOPS)  # preempt: a stop signal saves and stops (training.preempt)
    sys.exit(run_cli(main))

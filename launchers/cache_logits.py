"""Run trained teachers once over the packed training set and cache their top-k + tail per token.

    deepspeed launchers/cache_logits.py --data DATA --teachers RUN1/final RUN2/final --out CACHE
    python launchers/cache_logits.py ...          (one process)

Re-running the same command resumes: verified shards are kept, anything else is redone.
"""
import _preamble  # first: see launchers/_preamble.py

# isort: split
import os
import sys

from babylm_ds.config import parse
from babylm_ds.training import preempt
from babylm_ds.utils.cli import run_cli


def main(argv=None):
    cfg = parse("cache_logits", argv, __doc__)
    c, teachers, out = cfg.cache, cfg.distill.teachers, cfg.run.out
    import torch

    from babylm_ds.cache import (
        check_teacher,
        claim_cache,
        combined_logits,
        load_teachers,
        normalise_weights,
        teacher_info,
        write_cache,
    )
    from babylm_ds.cache.format import id_dtype
    from babylm_ds.data import PackedDataset, load_meta, verify_data
    from babylm_ds.training.dist import agree, init_distributed

    meta = load_meta(cfg.data.dir)
    vocab = meta["vocab_size"]
    if not 1 <= c.k <= vocab:
        raise ValueError(f"--k must be in [1, vocab_size={vocab}], got {c.k}")
    if c.shard_size < 1 or c.batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be positive")
    weights = normalise_weights(cfg.distill.teacher_weights, len(teachers))
    for path in teachers:
        check_teacher(path, meta, verify=not cfg.model.no_verify)
    dataset = PackedDataset(cfg.data.dir, "train")
    config = {
        "teachers": [teacher_info(path, w) for path, w in zip(teachers, weights, strict=True)],
        "combine": "weighted mean of raw logits",
        "tokenizer_hash": meta["tokenizer_hash"], "fingerprint": meta["fingerprint"], "seq_len": meta["seq_len"],
        "vocab_size": vocab, "split": "train", "num_sequences": len(dataset), "k": c.k,
        "shard_size": c.shard_size, "batch_size": c.batch_size, "teacher_dtype": c.teacher_dtype,
        "dtypes": {"ids": id_dtype(vocab), "logprobs": c.logprob_dtype, "tail": c.tail_dtype},
    }
    rank, world = init_distributed(cfg.run.dist_timeout)
    agree(lambda: rank == 0 and claim_cache(out, config, cfg.run.force))
    agree(lambda: verify_data(cfg.data.dir, rank, world, progress=rank == 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    models = load_teachers(teachers, vocab, device, getattr(torch, c.teacher_dtype))

    def teacher_fn(input_ids):
        return combined_logits(models, weights, input_ids)

    import torch.distributed as dist
    stopped = {}

    def stop(done, total):  # a stop signal on any rank ends every rank at this shard boundary
        if signame := preempt.requested(done):
            stopped.update(signame=signame, detail=f"at a shard boundary; {done} of {total} shards written and kept; "
                                                   "rerun the same command to resume")
        return bool(stopped)

    preempt.arm()
    manifest = write_cache(out, dataset, config, teacher_fn, c.batch_size, rank, world, dist.barrier,
                           device, c.kl_sample, c.kl_temperature,
                           log=lambda m: print(m, file=sys.stderr, flush=True), stop=stop)
    if stopped:
        preempt.stop(stopped["signame"], stopped["detail"], rank)
    preempt.disarm()
    if rank == 0:
        s = manifest["stats"]
        print(f"cache {out}: {config['num_sequences']} sequences x {config['seq_len']} tokens, k={c.k}, "
              f"{len(manifest['shards'])} shards, {s['bytes_per_token']:.0f} bytes/token")
        for key, v in s.get("kl", {}).items():
            print(f"  mean KL(full teacher || cached top-k+tail) {key}: {v['full']:.5f} nats/token "
                  f"(of which tail approximation {v['tail_approx']:.5f})")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    preempt.install(_preamble.STOPS, _preamble.ANCESTORS)  # a stop signal saves and stops (training.preempt)
    sys.exit(run_cli(main))

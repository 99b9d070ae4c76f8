"""Distillation throughput: offline (teacher cache) vs online (teachers in process) student steps.

Measures, for the same teachers and student: student step time with each source of targets (the
distill.py loss functions, a plain AdamW step, one process), cache write tokens/s, cache read tokens/s
against the rate the student consumes tokens, and bytes/token + KL(full ‖ cached) for several k.
Writes benchmarks/results/distill_throughput.{json,png} and prints a table.

  python benchmarks/distill_throughput.py --data DATA [--teachers T1 T2] [--device cuda]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from babylm_ds.cache import TeacherCache, combined_logits, load_teacher, teacher_info, write_cache  # noqa: E402
from babylm_ds.cache.format import id_dtype  # noqa: E402
from babylm_ds.cache.writer import sample_stats  # noqa: E402
from babylm_ds.config import Distill  # noqa: E402
from babylm_ds.losses import TAIL_MODES  # noqa: E402
from babylm_ds.models import build_model, count_parameters  # noqa: E402
from babylm_ds.training.distill import offline_loss, online_loss  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="prepared data dir (default: a small one built in a temp dir)")
    p.add_argument("--teachers", nargs="+", default=None,
                   help="teacher HF dirs (default: random-init llama-tiny + gpt2-tiny; "
                        "speed does not depend on training)")
    p.add_argument("--student", default="llama-tiny")
    p.add_argument("--student-config", nargs="*", default=["hidden_size=32", "num_hidden_layers=2",
                   "intermediate_size=64", "num_attention_heads=2", "num_key_value_heads=2"])
    p.add_argument("--sequences", type=int, default=256, help="sequences cached per k")
    p.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--k", type=int, default=64, help="k of the cache the offline student reads")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed student steps per mode (after 3 warm-up steps)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    return p.parse_args(argv)


def cache_config(meta, n, k, teachers):
    return {"teachers": [{"path": t} for t in teachers], "tokenizer_hash": meta["tokenizer_hash"],
            "fingerprint": meta["fingerprint"], "seq_len": meta["seq_len"], "vocab_size": meta["vocab_size"],
            "split": "train", "num_sequences": n, "k": k, "shard_size": 128, "batch_size": 16,
            "dtypes": {"ids": id_dtype(meta["vocab_size"]), "logprobs": "float16", "tail": "float32"}}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(model, loss_fns, batches, steps, device):
    """Median step time per loss function; the modes are interleaved step by step so that both see the
    same machine load."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = {name: [] for name in loss_fns}
    for i in range(steps + 3):
        batch = {k: v.to(device) for k, v in batches[i % len(batches)].items()}
        for name, loss_fn in loss_fns.items():
            sync(device)
            t0 = time.perf_counter()
            loss, _ = loss_fn(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    args = parse_args(argv)
    from babylm_ds.data import PackedDataset, load_meta, prepare_data
    work = tempfile.mkdtemp(prefix="distill-bench-")
    if args.data is None:
        args.data = os.path.join(work, "data")
        prepare_data(args.data, max_words=60_000, vocab_size=1000, seq_len=64, num_proc=1)
    meta, ds = load_meta(args.data), PackedDataset(args.data, "train")
    n = min(args.sequences, len(ds))
    subset = [ds[i] for i in range(n)]
    if args.teachers is None:
        args.teachers = []
        for seed, name in enumerate(("llama-tiny", "gpt2-tiny")):
            torch.manual_seed(seed)
            path = os.path.join(work, name)
            build_model(name, vocab_size=meta["vocab_size"]).save_pretrained(path)
            args.teachers.append(path)
    teachers = [load_teacher(t, args.device) for t in args.teachers]
    weights = [1.0 / len(teachers)] * len(teachers)
    torch.manual_seed(0)
    overrides = dict(kv.split("=") for kv in args.student_config)
    student = build_model(args.student, vocab_size=meta["vocab_size"], **{k: int(v) for k, v in overrides.items()})
    student.to(args.device).train()
    n_student, n_teachers = count_parameters(student), sum(count_parameters(t) for t in teachers)

    def teacher_fn(x):
        return combined_logits(teachers, weights, x)

    caches, per_k = {}, {}
    tokens = n * meta["seq_len"]
    for k in sorted(set(args.ks) | {args.k}):
        out = os.path.join(work, f"cache-k{k}")
        sync(args.device)
        t0 = time.perf_counter()
        manifest = write_cache(out, subset, cache_config(meta, n, k, args.teachers), teacher_fn, batch_size=16,
                               device=args.device, kl_sample=0, log=lambda m: None)
        seconds = time.perf_counter() - t0
        caches[k] = TeacherCache(out, manifest)
        stats = sample_stats(caches[k], subset, teacher_fn, min(32, n), 2.0, 16, args.device)
        per_k[k] = {"write_tokens_per_s": tokens / seconds,
                    "bytes_per_token": sum(s["size"] for s in manifest["shards"]) / tokens,
                    "kl": stats.get("kl", {})}

    g = torch.Generator().manual_seed(0)
    idx_batches = [torch.randint(0, n, (args.micro_batch,), generator=g) for _ in range(64)]
    batches = [{"input_ids": torch.stack([subset[int(i)]["input_ids"] for i in idx]), "idx": idx}
               for idx in idx_batches]
    cache = caches[args.k]
    t0 = time.perf_counter()
    for b in batches:
        cache.get(b["idx"], args.device)
    read_tps = len(batches) * args.micro_batch * meta["seq_len"] / (time.perf_counter() - t0)

    kd_args = Distill()  # alpha 0.5, T 2, per-token KL, uniform tail, no deep supervision
    loss_fns = {"offline": offline_loss(kd_args, cache), "online": online_loss(kd_args, teachers, weights, [])}
    step_s = time_steps(student, loss_fns, batches, args.steps, args.device)
    offline, online = step_s["offline"], step_s["online"]
    step_tokens = args.micro_batch * meta["seq_len"]
    result = {
        "device": args.device, "student": args.student, "student_params": n_student,
        "teachers": [t["name"] for t in map(teacher_info, args.teachers, weights)], "teacher_params": n_teachers,
        "teacher_to_student_params": n_teachers / n_student, "micro_batch": args.micro_batch,
        "seq_len": meta["seq_len"], "vocab_size": meta["vocab_size"], "k": args.k,
        "offline_step_s": offline, "online_step_s": online, "online_over_offline": online / offline,
        "offline_student_tokens_per_s": step_tokens / offline, "online_student_tokens_per_s": step_tokens / online,
        "cache_read_tokens_per_s": read_tps, "read_over_consumption": read_tps / (step_tokens / offline),
        "per_k": per_k,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "distill_throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(args.out, "distill_throughput.png"))
    print(table(result))
    return result


def table(r):
    lines = [f"student {r['student']} ({r['student_params']:,} params) vs teachers {', '.join(r['teachers'])} "
             f"({r['teacher_params']:,} params, {r['teacher_to_student_params']:.1f}x), {r['device']}, "
             f"batch {r['micro_batch']}x{r['seq_len']}",
             "| mode | step (ms) | student tokens/s | ratio |", "|---|---|---|---|",
             f"| offline (cache k={r['k']}) | {1e3 * r['offline_step_s']:.1f} "
             f"| {r['offline_student_tokens_per_s']:,.0f} | {r['online_over_offline']:.2f}x faster |",
             f"| online (teachers in process) | {1e3 * r['online_step_s']:.1f} "
             f"| {r['online_student_tokens_per_s']:,.0f} | 1.00x |",
             f"cache read {r['cache_read_tokens_per_s']:,.0f} tokens/s = {r['read_over_consumption']:.1f}x what the "
             "offline student consumes", "",
             "KL(teacher ‖ cached) nats/token: full vocab (tail spread uniformly) / "
             "over the k+1 categories the loss sees",
             "| k | bytes/token | write tokens/s | T=1 | T=2 uniform | T=2 flat | T=2 bucket |",
             "|---|---|---|---|---|---|---|"]
    for k, v in sorted(r["per_k"].items(), key=lambda kv: int(kv[0])):
        kl = v["kl"]
        modes = " | ".join(f"{kl[f'T=2/{m}']['full']:.4f} / {kl[f'T=2/{m}']['tail_approx']:.4f}" for m in TAIL_MODES)
        lines.append(f"| {k} | {v['bytes_per_token']:.0f} | {v['write_tokens_per_s']:,.0f} | "
                     f"{kl['T=1/uniform']['full']:.4f} | {modes} |")
    return "\n".join(lines)


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(["offline (cache)", "online"], [1e3 * r["offline_step_s"], 1e3 * r["online_step_s"]], color=["C0", "C1"])
    a.set_ylabel("student step (ms)")
    a.set_title(f"{r['online_over_offline']:.2f}x faster offline ({r['device']})")
    ks = sorted(r["per_k"], key=int)
    b.plot([int(k) for k in ks], [r["per_k"][k]["bytes_per_token"] for k in ks], "o-")
    b.set_xscale("log", base=2)
    b.set_xlabel("k")
    b.set_ylabel("cache bytes / token")
    b.set_title("cache size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Training throughput (forward + backward + AdamW step, one process) of BabyHGRN vs a Llama with about
the same parameter count, across sequence lengths at a fixed number of tokens per step.

  python benchmarks/train_throughput.py [--pairs tiny 16m] [--seq-lens 128 512 2048] [--steps 5]
  python benchmarks/train_throughput.py --presets {babyhgrn,llama,gpt2,mamba,lstm}-cpu --seq-lens 128

On CPU the BabyHGRN kernels run with BABYLM_DS_CPU_ISA's instruction set (avx512|avx2|baseline; default the
best this CPU runs), which the results record and, on CPU, name: train_throughput_cpu_avx2.{json,png} ...
Writes benchmarks/results/train_throughput[_cpu_ISA].{json,png} and prints a tokens/s table with HGRN/Llama ratios;
with --presets, benchmarks/results/train_throughput_presets.json and a tokens/s table of those presets.
"""
import argparse
import os
import statistics
import time

import torch

import babylm_ds.models as models
from babylm_ds.ops.hgrn2.ext import _C
from babylm_ds.utils.io import atomic_path, atomic_write_json

# pair name -> ((llama preset, overrides), (babyhgrn preset, overrides)), matched in parameter count
# (3.1M / 3.1M with vocab 16000; 16.6M / 16.7M: HGRN2 blocks are ~13 d^2, Llama's 16 d^2, so 10 vs 8 layers).
PAIRS = {
    "tiny": (("llama-tiny", {}), ("babyhgrn-tiny", {})),
    "16m": (("llama-16m", {}), ("babyhgrn-tiny", dict(hidden_size=256, num_hidden_layers=10, expand_ratio=64,
                                                      tie_word_embeddings=False))),
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def tokens_per_second(model, seq_len, tokens, steps, device):
    """Training tokens/s from the median step time over `steps` optimizer steps after one warm-up step
    (the median is robust to other processes' bursts on a shared machine)."""
    batch = max(1, tokens // seq_len)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq_len), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
    return batch * seq_len / statistics.median(times[1:]), batch


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((r["pair"], r["family"]) for r in rows):
        pts = [(r["seq_len"], r["tokens_per_s"]) for r in rows if (r["pair"], r["family"]) == key]
        ax.plot(*zip(*pts, strict=True), marker="o", ls="-" if key[1] == "llama" else "--",
                label=f"{key[1]} ({key[0]})")
    ax.set(xscale="log", xlabel="sequence length", ylabel="training tokens/s", ylim=(0, None))
    ax.set_xticks(sorted({r["seq_len"] for r in rows}), labels=sorted({r["seq_len"] for r in rows}))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def compare_presets(names, args, device):
    """tokens/s of each preset at each sequence length, one preset after the other."""
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = models.build_model(name, vocab_size=args.vocab_size).to(device).train()
        for seq_len in args.seq_lens:
            tps, batch = tokens_per_second(model, seq_len, args.tokens, args.steps, device)
            rows.append(dict(preset=name, seq_len=seq_len, batch=batch, params=models.count_parameters(model),
                             tokens_per_s=tps))
            print(f"{name:14s} T={seq_len:5d} B={batch:3d} {tps:10.0f} tok/s", flush=True)
        del model
    print("\n| preset | params | seq_len | tokens/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['seq_len']} | {r['tokens_per_s']:.0f} |")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--presets", nargs="+", default=None, help="instead of the pairs: these zoo presets")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (batch = tokens // seq_len)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--vocab-size", type=int, default=16000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="path prefix for .json/.png (default benchmarks/results/train_throughput"
                   "[_presets])")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    info = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
                tokens_per_step=args.tokens, steps=args.steps)
    if device.type == "cpu" and _C is not None:
        try:
            info["cpu_isa"] = _C.cpu_isa()  # raises on a bad BABYLM_DS_CPU_ISA
        except ValueError as e:
            raise SystemExit(str(e)) from None
    if args.presets:
        rows = compare_presets(args.presets, args, device)
        atomic_write_json((args.out or os.path.join(RESULTS, "train_throughput_presets")) + ".json",
                          dict(info=info, rows=rows))
        return 0
    args.out = args.out or os.path.join(RESULTS, "_".join(["train_throughput", *(
        ["cpu", info["cpu_isa"]] if "cpu_isa" in info else [])]))
    rows = []
    for pair in args.pairs:
        for family, (preset, overrides) in zip(("llama", "babyhgrn"), PAIRS[pair], strict=True):
            torch.manual_seed(0)
            model = models.build_model(preset, vocab_size=args.vocab_size, **overrides).to(device).train()
            for seq_len in args.seq_lens:
                tps, batch = tokens_per_second(model, seq_len, args.tokens, args.steps, device)
                rows.append(dict(pair=pair, family=family, preset=preset, overrides=overrides, seq_len=seq_len,
                                 batch=batch, params=models.count_parameters(model), tokens_per_s=tps))
                print(f"{pair:5s} {family:9s} T={seq_len:5d} B={batch:3d} {tps:10.0f} tok/s", flush=True)
            del model
    by = {(r["pair"], r["family"], r["seq_len"]): r for r in rows}
    ratios = {pair: {T: by[pair, "babyhgrn", T]["tokens_per_s"] / by[pair, "llama", T]["tokens_per_s"]
                     for T in args.seq_lens} for pair in args.pairs}
    atomic_write_json(args.out + ".json", dict(info=info, rows=rows, hgrn_over_llama=ratios))
    plot(rows, args.out + ".png")
    print("\n| pair | params (llama / hgrn) | seq_len | llama tok/s | hgrn tok/s | hgrn/llama |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        for T in args.seq_lens:
            lr, hr = by[pair, "llama", T], by[pair, "babyhgrn", T]
            print(f"| {pair} | {lr['params'] / 1e6:.1f}M / {hr['params'] / 1e6:.1f}M | {T} | {lr['tokens_per_s']:.0f} "
                  f"| {hr['tokens_per_s']:.0f} | {ratios[pair][T]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

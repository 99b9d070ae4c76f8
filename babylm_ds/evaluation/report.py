"""Result tables: markdown (one column per model), JSON, TensorBoard scalars, bar chart."""
from babylm_ds.utils.io import atomic_path, atomic_write_bytes, atomic_write_json

ROWS = ("blimp", "supplement", "ewok", "ewok_swap", "macro", "bear", "bear_lite")  # macro: blimp, supplement, ewok


def score(result, row):
    """A row's headline number (accuracy in [0, 1]) or None."""
    value = result.get(row)
    return value["mean"] if isinstance(value, dict) else value


def markdown_table(results):
    """`results`: {model name: evaluate_model() dict, optionally with "perplexity": {...}}."""
    names = list(results)
    rows = [r for r in ROWS if any(r in res for res in results.values())]
    lines = ["| benchmark | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in rows:
        cells = [f"{100 * score(res, r):.1f}" if r in res else "-" for res in results.values()]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    if any("perplexity" in res for res in results.values()):
        cells = [f"{res['perplexity']['perplexity']:.1f}" if "perplexity" in res else "-" for res in results.values()]
        lines.append("| dev perplexity | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paradigm_table(result):
    """Accuracy per paradigm (BLiMP, supplement, EWoK), per BEAR domain and relation."""
    lines = ["| benchmark | paradigm | accuracy |", "|---|---|---:|"]
    for row in ROWS:
        if isinstance(result.get(row), dict):
            parts = list(result[row]["paradigms"].items())
        else:
            parts = [(f"domain {d}", a) for d, a in result.get(f"{row}_domains", {}).items()]
            parts += list(result.get(f"{row}_relations", {}).items())
        lines += [f"| {row} | {p} | {100 * a:.1f} |" for p, a in parts]
    return "\n".join(lines) + "\n"


def save(out_prefix, results, title="Zero-shot accuracy (%)", details=True):
    """Write OUT_PREFIX.json and OUT_PREFIX.md atomically; return the markdown."""
    md = f"# {title}\n\n" + markdown_table(results)
    if details:
        md += "".join(f"\n## {name}\n\n" + paradigm_table(res) for name, res in results.items())
    atomic_write_json(out_prefix + ".json", results)
    atomic_write_bytes(out_prefix + ".md", md.encode())
    return md


def log_tensorboard(logdir, result, step=0, prefix="zeroshot"):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(logdir) as w:
        for row in ROWS:
            if row in result:
                w.add_scalar(f"{prefix}/{row}", score(result, row), step)
        if "perplexity" in result:
            w.add_scalar(f"{prefix}/dev_perplexity", result["perplexity"]["perplexity"], step)


def bar_chart(path, results, title="Zero-shot accuracy"):
    """Grouped bars with their values: one group per benchmark, one bar per model, the 50% chance line
    labelled, the y range fitted to the scores; a second panel with dev perplexity when known (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if any(r in res for res in results.values())]
    ppl = {name: res["perplexity"]["perplexity"] for name, res in results.items() if "perplexity" in res}
    width = 0.8 / max(1, len(results))
    fig, axes = plt.subplots(1, 2 if ppl else 1, figsize=(1.8 * len(rows) + 2 + (3 if ppl else 0), 4.5),
                             gridspec_kw={"width_ratios": [len(rows), 1.5]} if ppl else None, squeeze=False)
    ax = axes[0, 0]
    values = []
    for k, (name, res) in enumerate(results.items()):
        xs = [i + k * width for i in range(len(rows))]
        ys = [100 * score(res, r) if r in res else float("nan") for r in rows]
        values += [y for y in ys if y == y]
        ax.bar_label(ax.bar(xs, ys, width, label=name), fmt="%.1f", fontsize=7, padding=1)
    ax.axhline(50, color="grey", lw=0.8, ls="--", label="chance (50%)")
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(rows))], rows)
    ax.set_ylabel("accuracy (%)")
    lo, hi = min(values + [50]), max(values + [50])
    ax.set_ylim(max(0, lo - 5), min(100, hi + 6))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    if ppl:
        ax = axes[0, 1]
        colors = [f"C{k}" for k, name in enumerate(results) if name in ppl]
        ax.bar_label(ax.bar(range(len(ppl)), list(ppl.values()), color=colors), fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(range(len(ppl)), [""] * len(ppl))
        ax.set_title("dev perplexity (lower is better)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path

"""Result tables: markdown (one column per model), JSON, TensorBoard scalars, bar chart."""
from babylm_ds.utils.io import atomic_path, atomic_write_bytes, atomic_write_json

ROWS = ("blimp", "supplement", "ewok", "ewok_swap", "macro")


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
    lines = ["| benchmark | paradigm | accuracy |", "|---|---|---:|"]
    for bench in ROWS[:-1]:
        if bench in result:
            lines += [f"| {bench} | {p} | {100 * a:.1f} |" for p, a in result[bench]["paradigms"].items()]
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
    """Grouped bars: one group per benchmark, one bar per model (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if any(r in res for res in results.values())]
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    for k, (name, res) in enumerate(results.items()):
        xs = [i + k * width for i in range(len(rows))]
        ax.bar(xs, [100 * (score(res, r) or 0) for r in rows], width, label=name)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(rows))], rows)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


"""The study's report: learning-rate sweep (dev loss, the selection criterion), learning curves per
epoch, final scores with 95% bootstrap intervals over items (zero-shot, BEAR, fine-tuning accuracy on the
valid split), and paired differences (architectures against each other, each student against its no-KD
twin). Written as study.{md,json,png}."""
import json

import numpy as np

from babylm_ds.evaluation import report as eval_report, stats
from babylm_ds.evaluation.glue import TASKS as GLUE
from babylm_ds.utils.io import atomic_path, atomic_write_bytes, atomic_write_json

# macro: the mean of blimp, supplement, ewok (BabyLM's zero-shot); BEAR and fine-tuning are reported beside it
ROWS = ("blimp", "supplement", "ewok", "macro", "bear", "bear_lite", *GLUE, "dev_loss")
CHANCE = 0.5


def curves(metrics_path, steps_per_epoch):
    """{metric: [(epoch, value), ...]} of the epoch-end dev loss and zero-shot scores of one run."""
    out = {}
    with open(metrics_path) as f:
        for line in f:
            rec = json.loads(line)
            for key, value in rec.items():
                if key == "dev/loss" or key.startswith("zeroshot/"):
                    out.setdefault(key.split("/", 1)[1], []).append((rec["step"] / steps_per_epoch, value))
    return out


def _summarise(evals, names, benchmarks, n_boot):
    """Seed-averaged scores of a group of runs: point values and bootstrap replicates per row."""
    reps = [stats.bootstrap_result(evals[n], benchmarks, n_boot) for n in names]
    rows = [r for r in ROWS if all(r in x for x in reps)]
    point = {r: float(np.mean([_point(evals[n], r) for n in names])) for r in rows}
    return point, {r: np.mean([x[r] for x in reps], axis=0) for r in rows}


def _fmt(row, value, ci=None):
    if row == "dev_loss":
        text = f"{value:.3f}"
        return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    text = f"{100 * value:.1f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def build(spec, steps, sweep, students, best, summaries, evals, metrics, params):
    """The report as a dict (JSON-ready, with "markdown"); `steps`: {run name: (steps per epoch, steps)},
    `params`: {architecture: parameter count}."""
    n_boot = spec["evaluation"]["bootstrap"]
    benchmarks = [b for b in ("blimp", "supplement", "ewok") if b in spec["evaluation"]["tasks"].split(",")]
    groups = {arch: [r.name for r in sweep if r.arch == arch and r.lr == best[arch]] for arch in spec["architectures"]}
    groups.update({name: [r.name for r in students if r.student == name] for name in spec["students"]})
    final, reps = {}, {}
    for group, names in groups.items():
        point, reps[group] = _summarise(evals, names, benchmarks, n_boot)
        arch = spec["students"][group]["arch"] if group in spec["students"] else group
        final[group] = {"runs": names, "params": params[arch],
                        **{r: {"value": v, "ci95": stats.interval(reps[group][r])} for r, v in point.items()}}
        for task, r in evals[names[0]].get("finetune", {}).items():
            final[group][task]["majority"] = r["majority"]
        if len(names) > 1:
            for r in point:
                final[group][r]["seed_std"] = float(np.std([_point(evals[n], r) for n in names], ddof=1))
    pairs = [(a, b) for i, a in enumerate(spec["architectures"]) for b in list(spec["architectures"])[i + 1:]]
    pairs += [(name, s["arch"]) for name, s in spec["students"].items()]
    diffs = {f"{a} - {b}": {r: {"value": final[a][r]["value"] - final[b][r]["value"],
                                "ci95": stats.interval(reps[a][r] - reps[b][r])}
                            for r in ROWS if r in reps[a] and r in reps[b]} for a, b in pairs}
    sweep_table = {r.name: {"arch": r.arch, "lr": r.lr, "seed": r.seed, "dev_loss": summaries[r.name]["dev_loss"],
                            "selected": r.lr == best[r.arch]} for r in sweep}
    result = {"name": spec["name"], "steps": {n: s[1] for n, s in steps.items()},
              "steps_per_epoch": {n: s[0] for n, s in steps.items()}, "selected_lr": best,
              "sweep": sweep_table, "final": final, "differences": diffs,
              "scores": eval_report.markdown_table({g: evals[names[0]] for g, names in groups.items()
                                                    if len(names) == 1} or {n: evals[n] for n in evals}),
              "finetune": {n: e["finetune"] for n, e in evals.items() if "finetune" in e},
              "curves": {n: curves(p, steps[n][0]) for n, p in metrics.items()},
              "tokens_per_s": {n: s.get("tokens_per_s") for n, s in summaries.items()}}
    result["markdown"] = markdown(spec, result)
    return result


def _point(result, row):
    """A row's value in one run's evaluation: dev loss, a fine-tuning task's valid accuracy, or the benchmark's
    headline accuracy."""
    if row == "dev_loss":
        return result["perplexity"]["loss"]
    return result["finetune"][row]["accuracy"] if row in GLUE else eval_report.score(result, row)


def _header(row, final):
    """A row's column title: fine-tuning tasks with their valid split's majority-class accuracy."""
    majority = next((f[row]["majority"] for f in final.values() if "majority" in f.get(row, {})), None)
    return ("dev loss" if row == "dev_loss" else row.upper() if row in GLUE else row) + \
        (f" (maj. {100 * majority:.1f})" if majority is not None else "")


def finetune_table(runs):
    """Markdown: every fine-tuning score of every fine-tuned run (`runs`: {run: {task: result}})."""
    lines = ["| run | task | accuracy | F1 | MCC | majority | train / valid | epochs (kept) | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {t} | {100 * r['accuracy']:.1f} | {100 * r['f1']:.1f} | {r['mcc']:.3f} "
              f"| {100 * r['majority']:.1f} | {r['n_train']} / {r['n_valid']} | {r['epochs']} ({r['best_epoch']}) "
              f"| {r['seconds']} |"
              for n, tasks in runs.items() for t, r in tasks.items()]
    return "\n".join(lines) + "\n"


def _about(spec, rows):
    """What the final table's columns are: items, chance, the macro, BEAR's instances, the fine-tuning recipe."""
    e = spec["evaluation"]
    items = "every item" if e["final_limit"] is None else f"the first {e['final_limit']} items per paradigm"
    text = (f"BLiMP, supplement, EWoK: {items}, chance 50; macro: their mean (BEAR and the fine-tuning tasks do not "
            "enter it)")
    if bear := [r for r in rows if r.startswith("bear")]:
        limit = e["bear_limit"] or e["final_limit"]
        text += (f"; {', '.join(bear)}: {'every instance' if limit is None else f'the first {limit} instances'} "
                 "of each relation, chance 1 / its answer space")
    if ft := e["finetune"]:
        recipe = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ft.items()
                           if k not in ("tasks", "models", "data_dir", "valid_batch_size") and v is not None)
        text += (f"; {', '.join(t.upper() for t in ft['tasks'].split(','))}: accuracy on the valid split after "
                 f"fine-tuning ({recipe}), majority class in the column title")
    return items, text


def markdown(spec, res):
    rows = [r for r in ROWS if any(r in f for f in res["final"].values())]
    items, about = _about(spec, rows)
    lrs = ", ".join(f"{a} {len(x['lrs'])}" for a, x in spec["architectures"].items())
    steps = {}
    for name, r in res["sweep"].items():
        steps.setdefault(r["arch"], res["steps"][name])
    steps = (f"{next(iter(steps.values()))} steps" if len(set(steps.values())) == 1 else
             "steps " + ", ".join(f"{a} {n}" for a, n in steps.items()))
    lines = [f"# Study `{res['name']}`", "",
             f"Learning rates per architecture: {lrs}; {len(spec['seeds'])} seed(s); {steps} of "
             f"{spec['data']['seq_len']}-token sequences. The lr of each architecture is selected on final dev loss "
             "(never on the benchmarks below); students train at their architecture's selected lr for the "
             "same steps.",
             "", "## Learning-rate sweep (final dev loss; * selected)", "",
             "| run | lr | dev loss |", "|---|---:|---:|"]
    for name, r in res["sweep"].items():
        lines.append(f"| {name} | {r['lr']:g} | {r['dev_loss']:.4f}{' *' if r['selected'] else ''} |")
    lines += ["", f"## Final scores (%, 95% bootstrap interval over items"
                  f"{', mean over seeds' if len(spec['seeds']) > 1 else ''})", "", about + ".", "",
              "| model | params | " + " | ".join(_header(r, res["final"]) for r in rows) + " |",
              "|---|---:|" + "---:|" * len(rows)]
    for group, f in res["final"].items():
        lines.append(f"| {group} | {f['params'] / 1e6:.2f}M | "
                     + " | ".join(_fmt(r, f[r]["value"], f[r]["ci95"]) if r in f else "-" for r in rows) + " |")
    lines += ["", "## Paired differences (same items; 95% bootstrap interval)", "",
              "| comparison | " + " | ".join(_header(r, {}) for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for name, d in res["differences"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r, d[r]["value"], d[r]["ci95"]) if r in d else "-"
                                                 for r in rows) + " |")
    lines += ["", f"## Every score (%, {items})", "", res["scores"].rstrip("\n")]
    if res["finetune"]:
        lines += ["", "## Fine-tuning (%, valid split; MCC in [-1, 1])", "",
                  finetune_table(res["finetune"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def plot(path, res):
    """Learning curves (dev loss and BLiMP per epoch, selected runs and students), the lr sweep, the final scores
    (zero-shot; BEAR and fine-tuning beside them, with the majority class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [n for g in res["final"].values() for n in g["runs"]]
    fig, axes = plt.subplots(1, 5, figsize=(23, 4.2))
    for ax, key, label in ((axes[0], "loss", "dev loss (nats/token)"), (axes[1], "blimp", "BLiMP accuracy (%)")):
        for name in shown:
            pts = res["curves"][name].get(key, [])
            if pts:
                xs, ys = zip(*pts, strict=True)
                ys = [100 * y for y in ys] if key != "loss" else ys
                ax.plot(xs, ys, marker="o", label=name)
                ax.annotate(f"{ys[-1]:.1f}" if key != "loss" else f"{ys[-1]:.3f}", (xs[-1], ys[-1]), fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[1].axhline(100 * CHANCE, color="grey", ls="--", lw=0.8)
    axes[1].text(axes[1].get_xlim()[0], 100 * CHANCE, " chance", va="bottom", fontsize=7, color="grey")
    archs = sorted({r["arch"] for r in res["sweep"].values()})
    for arch in archs:
        pts = sorted((r["lr"], r["dev_loss"]) for r in res["sweep"].values() if r["arch"] == arch)
        axes[2].plot(*zip(*pts, strict=True), marker="o", label=f"{arch} (selected {res['selected_lr'][arch]:g})")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("learning rate")
    axes[2].set_ylabel("final dev loss")
    axes[2].legend(fontsize=7)
    axes[1].set_title("per-epoch zero-shot (epoch-end subset of items)", fontsize=9)
    groups = list(res["final"])
    zero = [r for r in ("blimp", "supplement", "ewok", "macro") if r in res["final"][groups[0]]]
    other = [r for r in ROWS[4:-1] if any(r in f for f in res["final"].values())]  # BEAR, fine-tuning
    for ax, rows, title in ((axes[3], zero, "final zero-shot scores"), (axes[4], other, "BEAR, fine-tuning (valid)")):
        labelled = set()
        for i, row in enumerate(rows):
            for j, group in enumerate(groups):
                if row not in (f := res["final"][group]):
                    continue
                lo, hi = (100 * x for x in f[row]["ci95"])
                y = 100 * f[row]["value"]
                ax.errorbar(i + 0.8 * j / len(groups), y, [[y - lo], [hi - y]], fmt="o", capsize=3, color=f"C{j}",
                            label=None if group in labelled else group)
                labelled.add(group)
                if "majority" in f[row]:
                    ax.hlines(100 * f[row]["majority"], i - 0.1, i + 0.9, color="grey", lw=0.8)
        ax.set_xticks([i + 0.4 * (len(groups) - 1) / len(groups) for i in range(len(rows))], rows)
        ax.set_ylabel("accuracy (%), 95% CI")
        ax.set_title(title + (" (grey: majority class)" if any(r in GLUE for r in rows) else ""), fontsize=9)
        if rows:
            ax.legend(fontsize=7)
    axes[3].axhline(100 * CHANCE, color="grey", ls="--", lw=0.8)
    fig.suptitle(f"study {res['name']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write(prefix, res):
    """study.json, study.md and study.png beside `prefix`, atomically; returns their paths."""
    atomic_write_json(prefix + ".json", res)
    atomic_write_bytes(prefix + ".md", res["markdown"].encode())
    plot(prefix + ".png", res)
    return [prefix + ".json", prefix + ".md", prefix + ".png"]

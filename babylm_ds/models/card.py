"""Model card of an exported model folder: `README.md` in HF's format (YAML header + markdown), rendered
from `model_card.json` (the facts: architecture, data, training, teachers, zero-shot scores).

The trainer writes both at export; `babylm-ds eval` adds its scores with `update_scores`, `babylm-ds finetune`
its (Super)GLUE scores with `update_finetune`. Neither
file is listed in the folder's manifest.json (which covers the model itself), so a card update
leaves the model's identity unchanged.
"""
import json
import os
import shlex
import sys

from babylm_ds.utils.io import atomic_write_bytes, atomic_write_json

CARD_FILES = ("README.md", "model_card.json")
_CONFIG_FIELDS = ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
                  "num_attention_heads", "n_head", "num_heads", "expand_ratio", "intermediate_size",
                  "max_position_embeddings", "n_positions", "tie_word_embeddings")


def _data_facts(data_dir):
    from babylm_ds.data import load_meta

    meta = load_meta(data_dir)
    return {"dir": os.path.abspath(data_dir), "corpus": meta["corpus"], "word_budget": meta["word_budget"],
            "words": meta["word_count"], "words_by_source": meta["word_count_by_source"],
            "tokens_per_word": meta["tokens_per_word"], "seq_len": meta["seq_len"], "vocab_size": meta["vocab_size"],
            "train_sequences": meta["splits"]["train"]["num_sequences"]}


def architecture(model):
    """The card's architecture facts of an exported model."""
    from babylm_ds.models.registry import family_of

    config = model.config.to_dict()
    return {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "remote_code": family_of(model) is not None,
            "config": {k: config[k] for k in _CONFIG_FIELDS if config.get(k) is not None}}


def launch_command(world_size, argv=None):
    """The command that reruns this launcher: `deepspeed --num_gpus N SCRIPT ARGS` (python for one process)."""
    argv = [a for a in (sys.argv if argv is None else argv) if not a.startswith("--local_rank")]
    script = os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]
    prefix = ["deepspeed", "--num_gpus", str(world_size)] if world_size > 1 else ["python"]
    return shlex.join(prefix + [script] + argv[1:])


def facts(cfg, summary, command, ds_config, extra=None):
    """The card's facts (all but the architecture) of a training run of Config `cfg`."""
    return {
        "name": os.path.basename(os.path.normpath(cfg.run.out)),
        "data": _data_facts(cfg.data.dir),
        "training": {"command": command, "steps": summary["steps"], "world_size": summary["world_size"],
                     "train_tokens": summary["train_tokens"], "train_loss": summary["train_loss"],
                     "dev_loss": summary["dev_loss"], "seed": cfg.run.seed, "lr": cfg.optim.lr,
                     "schedule": cfg.optim.schedule, "micro_batch": ds_config["train_micro_batch_size_per_gpu"],
                     "grad_accum": ds_config["gradient_accumulation_steps"],
                     "zero_stage": ds_config.get("zero_optimization", {}).get("stage", 0),
                     "bf16": bool(ds_config.get("bf16", {}).get("enabled"))},
        **(extra or {}),
    }


def _fmt(x):
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def render(card):
    """README.md text of a card dict."""
    arch, data, train = card["architecture"], card["data"], card["training"]
    model_type = arch["config"].get("model_type", "")
    teachers = card.get("distillation", {}).get("teachers", [])
    tags = ["babylm", "babylm-ds", model_type] + (["knowledge-distillation"] if teachers else [])
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "language:", "- en",
             "tags:", *[f"- {t}" for t in tags if t], "---", "", f"# {card['name']}", ""]
    kd = f", distilled from {len(teachers)} teacher(s)" if teachers else ""
    lines += [f"A {arch['class']} ({arch['parameters'] / 1e6:.1f}M parameters) trained with babylm-ds on "
              f"{data['words']:,} words{kd}.", "", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", "tokenizer = AutoTokenizer.from_pretrained(PATH)"]
    if arch["remote_code"]:
        lines += ["model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)", "```", "",
                  f"`trust_remote_code=True` runs this folder's `configuration_{model_type}.py` and "
                  f"`modeling_{model_type}.py` (generated from babylm-ds's source; torch and transformers 4.46 "
                  "or newer suffice, babylm-ds's compiled kernels are used where it is installed). With babylm-ds "
                  "installed, `import babylm_ds` registers the model type and `trust_remote_code` is not needed."]
    else:
        lines += ["model = AutoModelForCausalLM.from_pretrained(PATH)", "```"]
    lines += ["", "## Architecture", "", "| field | value |", "|---|---|", f"| class | {arch['class']} |",
              f"| parameters | {arch['parameters']:,} |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in arch["config"].items()]
    by_source = ", ".join(f"{k} {v:,}" for k, v in data["words_by_source"].items())
    lines += ["", "## Data", "", f"- corpus: {data['corpus']} ({data['dir']})",
              f"- words: {data['words']:,} (word budget {data['word_budget']:,}; {by_source})",
              f"- tokenizer: BPE, vocabulary {data['vocab_size']:,}, {data['tokens_per_word']} tokens/word",
              f"- training sequences: {data['train_sequences']:,} x {data['seq_len']} tokens"]
    lines += ["", "## Training", "", "```bash", train["command"], "```", "",
              f"- {train['steps']:,} optimizer steps, {train['train_tokens']:,} tokens on {train['world_size']} "
              f"process(es); micro batch {train['micro_batch']} x accumulation {train['grad_accum']}, "
              f"lr {train['lr']} ({train['schedule']}), seed {train['seed']}",
              f"- DeepSpeed ZeRO stage {train['zero_stage']}, {'bf16' if train['bf16'] else 'fp32'}",
              f"- final train loss {_fmt(train['train_loss'])}, dev loss {_fmt(train['dev_loss'])}"]
    if kd := card.get("distillation"):
        lines += ["", "## Teachers", "", f"Offline top-{kd['k']} logits" if kd.get("k") else "Online teachers",
                  f"(loss = {kd['alpha']}·CE + {1 - kd['alpha']:g}·T²·KL at T = {kd['temperature']}):", ""]
        lines += [f"- {t['name']} ({t.get('model_type', '?')}, weight {t.get('weight', 1):.3g})" for t in teachers]
    lines += ["", "## Zero-shot evaluation", ""]
    scores = card.get("zeroshot")
    if scores:
        limit = scores["limit"]
        lines += [f"`babylm-ds eval` (BabyLM scoring; BEAR as lm-pub-quiz scores it; macro = mean of blimp, supplement "
                  f"and ewok), {'all items' if limit is None else f'first {limit} items per paradigm / relation'}:",
                  "", "| benchmark | accuracy (%) |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in scores["accuracy"].items()]
        if "perplexity" in scores:
            lines.append(f"| dev perplexity | {scores['perplexity']:.1f} |")
    else:
        lines.append("Not evaluated yet: `babylm-ds eval --model PATH` adds the scores here.")
    if ft := card.get("finetune"):
        lines += ["", "## Fine-tuning ((Super)GLUE)", "", f"`{ft['command']}` (the BabyLM 2025 pipeline's recipe; the "
                  "epoch with the best valid score kept; majority = the valid split's majority-class accuracy):", "",
                  "| task | accuracy (%) | F1 (%) | MCC | majority (%) | train / valid | epochs | lr | batch |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {t} | {100 * r['accuracy']:.1f} | {100 * r['f1']:.1f} | {r['mcc']:.3f} | "
                  f"{100 * r['majority']:.1f} | {r['n_train']:,} / {r['n_valid']:,} | {r['epochs']} | {r['lr']:g} | "
                  f"{r['batch_size']} |"
                  for t, r in ft["tasks"].items()]
    return "\n".join(lines) + "\n"


def write_card(model_dir, card):
    atomic_write_json(os.path.join(model_dir, "model_card.json"), card)
    atomic_write_bytes(os.path.join(model_dir, "README.md"), render(card).encode())


def card_dir(path):
    """`path`, or a run dir's `path/final`, whichever holds a card (model_card.json); else `path`."""
    final = os.path.join(path, "final")
    return final if not os.path.isfile(os.path.join(path, "model_card.json")) and os.path.isdir(final) else path


def _update(model_dir, change):
    """Apply `change(card)` to `model_dir`'s card and rewrite it; False when the folder has no card."""
    path = os.path.join(model_dir, "model_card.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        card = json.load(f)
    change(card)
    write_card(model_dir, card)
    return True


def update_scores(model_dir, result):
    """Put an `evaluate_model` result into `model_dir`'s card (beside the card's earlier scores made with the same
    `limit`); returns False when it has no card."""
    from babylm_ds.evaluation.report import ROWS, score

    def change(card):
        old = card.get("zeroshot") or {}
        new = {"limit": result.get("limit"), "accuracy": {r: score(result, r) for r in ROWS if r in result}}
        if old.get("limit") == new["limit"]:
            new["accuracy"] = {r: v for r in ROWS if (v := new["accuracy"].get(r, old["accuracy"].get(r))) is not None}
            if "perplexity" in old:
                new["perplexity"] = old["perplexity"]
        if "perplexity" in result:
            new["perplexity"] = result["perplexity"]["perplexity"]
        card["zeroshot"] = new

    return _update(model_dir, change)


def update_finetune(model_dir, result):
    """Put a `babylm-ds finetune` result into `model_dir`'s card (tasks fine-tuned earlier stay); False without
    a card."""
    keys = ("accuracy", "f1", "mcc", "majority", "n_train", "n_valid", "epochs", "best_epoch", "lr", "batch_size")

    def change(card):
        tasks = {**card.get("finetune", {}).get("tasks", {}),
                 **{t: {k: r[k] for k in keys} for t, r in result["tasks"].items()}}
        card["finetune"] = {"command": result["command"], "tasks": tasks}

    return _update(model_dir, change)

"""`babylm-ds finetune`: fine-tune a copy of a model on (Super)GLUE tasks with the BabyLM 2025 pipeline's recipe.

Per task (`glue.TASKS`, data as `glue.read_split` reads it): a fresh copy of the model with a sequence-
classification head (`AutoModelForSequenceClassification`: a linear layer on the last real token, as
transformers' Llama / GPT-2 classes), the task's text pair tokenized as the pipeline tokenizes it with an
exported tokenizer (`<s> A <s> B`, truncated longest-first to the sequence length) and padded on the right;
AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01 on every parameter), linear warmup over 6% of the steps
then cosine decay to 0.1 x lr, shuffled batches with the last incomplete one dropped, a valid pass after every
epoch. The epoch with the best valid accuracy (F1 for mrpc and qqp; the first of equal ones) is kept; its valid
scores and predictions are the result. Runs in one process on CPU or one GPU; no DeepSpeed.
"""
import contextlib
import os
import pathlib
import shlex
import sys
import time

import torch
from tqdm.auto import tqdm

from babylm_ds import config
from babylm_ds.models.card import card_dir, update_finetune
from babylm_ds.models.manifest import add_verify_arg
from babylm_ds.utils.cli import run_cli
from babylm_ds.utils.io import atomic_write_bytes, atomic_write_json, sha256_file

from .glue import SPLITS, TASKS, check_settings, parse_tasks, read_split
from .load import load_classifier, model_name, resolve_device

WARMUP, MIN_LR_RATIO, WEIGHT_DECAY = 0.06, 0.1, 0.01


def build_parser():
    """The fine-tuning settings of the configuration tree (its `finetune` section), then the tool's own options."""
    p = config.build_parser("finetune", __doc__, prog="babylm-ds finetune")
    tool = p.add_argument_group("model and outputs")
    tool.add_argument("--model", required=True, help="exported HF model dir (or a training output dir with final/)")
    add_verify_arg(tool)
    tool.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    tool.add_argument("--save", default=None, metavar="DIR",
                      help="also export each task's kept classifier to DIR/TASK (HF folder, trust_remote_code)")
    tool.add_argument("--babylm-results", default=None, metavar="DIR",
                      help="also write the BabyLM pipeline's finetune/TASK/{predictions.json,results.txt} under DIR")
    tool.add_argument("--name", default=None, help="model name in the report (default: the model dir name)")
    tool.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    tool.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def encode(tokenizer, pairs, seq_len):
    """Token ids of each (A, B) pair as the BabyLM pipeline gets them from an exported tokenizer: `<s> A <s> B`."""
    from babylm_ds.models.remote_code import with_bos

    a, b = zip(*pairs, strict=True)
    return with_bos(tokenizer)(list(a), list(b), truncation=True, max_length=seq_len)["input_ids"]


def batches(ids, order, batch_size, pad_id):
    """(indices, input_ids, attention_mask) of consecutive batches of `order`, padded on the right."""
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        lengths = torch.tensor([len(ids[i]) for i in idx])
        x = torch.full((len(idx), int(lengths.max())), pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            x[row, :len(ids[i])] = torch.tensor(ids[i])
        yield idx, x, (torch.arange(x.shape[1]) < lengths[:, None]).long()


def metrics(preds, labels, num_labels):
    """accuracy, F1 (binary, class 1 positive; macro over classes for 3 labels) and Matthews correlation."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {"accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, average="binary" if num_labels == 2 else "macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(labels, preds))}


@torch.no_grad()
def predict(model, ids, pad_id, batch_size, device):
    """argmax class of every sequence (length-sorted batches, returned in input order)."""
    model.eval()
    preds = [0] * len(ids)
    for idx, x, mask in batches(ids, sorted(range(len(ids)), key=lambda i: len(ids[i])), batch_size, pad_id):
        logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits
        for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
            preds[i] = p
    return preds


def finetune_task(model_path, task, data, ft, device, verify=True):
    """Fine-tune a copy of `model_path` on `task` (`data`: {split: (pairs, labels)}) with the settings `ft`
    (`config.Finetune`); returns (result, valid predictions, model with the kept epoch's weights, tokenizer)."""
    from babylm_ds.training.schedule import build_scheduler

    spec, t0 = TASKS[task], time.time()
    epochs, batch_size = ft.epochs or spec.epochs, ft.batch_size or spec.batch_size
    torch.manual_seed(ft.seed)  # the head's initialisation
    model, tokenizer = load_classifier(model_path, spec.num_labels, device, verify=verify)
    if (pad_id := tokenizer.pad_token_id) is None:
        raise ValueError(f"{model_path}: its tokenizer has no pad token (babylm-ds tokenizers have <pad> = 0)")
    model.config.pad_token_id = pad_id
    (train_pairs, train_labels), (valid_pairs, valid_labels) = (data[s] for s in SPLITS)
    train_ids, valid_ids = (encode(tokenizer, pairs, ft.seq_len) for pairs in (train_pairs, valid_pairs))
    steps_per_epoch = len(train_ids) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{task}: {len(train_ids)} training examples are fewer than one batch of {batch_size}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=ft.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=WEIGHT_DECAY)
    total = steps_per_epoch * epochs
    scheduler = build_scheduler(optimizer, total, int(WARMUP * total), "cosine", MIN_LR_RATIO)
    generator = torch.Generator().manual_seed(ft.seed)
    best, history = None, []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_ids), generator=generator)[:steps_per_epoch * batch_size].tolist()
        losses = []
        for idx, x, mask in tqdm(batches(train_ids, order, batch_size, pad_id), total=steps_per_epoch,
                                 desc=f"{task} epoch {epoch}/{epochs}", leave=False):
            y = torch.tensor([train_labels[i] for i in idx], device=device)
            loss = model(input_ids=x.to(device), attention_mask=mask.to(device), labels=y).loss
            if not torch.isfinite(loss):
                raise ValueError(f"{task}: epoch {epoch}: loss {loss.item()}: fine-tuning diverged; lower --lr")
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        preds = predict(model, valid_ids, pad_id, ft.valid_batch_size, device)
        scores = metrics(preds, valid_labels, spec.num_labels)
        history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "first_loss": losses[0],
                        "last_loss": losses[-1], **scores})
        if best is None or scores[spec.select_on] > best[0][spec.select_on]:
            best = scores, preds, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"{task} epoch {epoch}/{epochs}: train loss {history[-1]['train_loss']:.4f}, valid "
              + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), file=sys.stderr, flush=True)
    scores, preds, epoch, state = best
    model.load_state_dict(state)
    counts = [valid_labels.count(c) for c in range(spec.num_labels)]
    result = {**scores, "majority": max(counts) / len(valid_labels), "n_train": len(train_ids),
              "n_valid": len(valid_ids), "best_epoch": epoch, "epochs": epochs, "batch_size": batch_size,
              "lr": ft.lr, "steps": total, "select_on": spec.select_on, "history": history,
              "predictions": preds, "correct": [int(p == y) for p, y in zip(preds, valid_labels, strict=True)],
              "seconds": round(time.time() - t0, 1)}
    return result, preds, model.eval(), tokenizer


def markdown(result):
    lines = [f"# Fine-tuning ((Super)GLUE): {result['name']}", "", f"`{result['command']}`", "",
             "| task | accuracy | F1 | MCC | majority | train / valid | epochs (kept) | lr | batch | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {t} | {100 * r['accuracy']:.1f} | {100 * r['f1']:.1f} | {r['mcc']:.3f} | {100 * r['majority']:.1f} | "
              f"{r['n_train']} / {r['n_valid']} | {r['epochs']} ({r['best_epoch']}) | {r['lr']:g} | "
              f"{r['batch_size']} | {r['seconds']} |" for t, r in result["tasks"].items()]
    return "\n".join(lines) + "\n\nAccuracy, F1 and majority (the valid split's majority-class accuracy) in %.\n"


def run(args, argv):
    ft = config.updated(config.Config(), config.namespace_values(args)).finetune
    check_settings(ft, lambda key: "--" + key.replace("_", "-"))
    tasks = parse_tasks(ft.tasks)
    data = {t: {s: read_split(t, s, ft.data_dir) for s in SPLITS} for t in tasks}  # bad data fails before training
    for d in data.values():
        d["train"] = tuple(x[:ft.max_train] for x in d["train"])
    if args.threads:
        torch.set_num_threads(args.threads)
    device, t0 = resolve_device(args.device), time.time()
    manifests = [m for d in ("", "final") if os.path.isfile(m := os.path.join(args.model, d, "manifest.json"))]
    result = {"name": args.name or model_name(args.model), "model": os.path.abspath(args.model),
              "model_manifest_sha256": sha256_file(manifests[0]) if manifests else None,
              "command": shlex.join(["babylm-ds", "finetune", *argv]),
              "settings": {k: v for k, v in vars(ft).items() if k != "tasks"} |
              {"warmup": WARMUP, "min_lr_ratio": MIN_LR_RATIO, "weight_decay": WEIGHT_DECAY, "device": str(device)},
              "tasks": {}}
    for task in tasks:
        result["tasks"][task], preds, model, tokenizer = finetune_task(args.model, task, data[task], ft, device,
                                                                       verify=not args.no_verify)
        if args.babylm_results:
            from .babylm_pipeline import write_finetune_predictions

            write_finetune_predictions(args.babylm_results, pathlib.Path(args.model).stem, task, preds,
                                       result["tasks"][task])
        if args.save:
            from babylm_ds.training.trainer import export_hf

            with contextlib.redirect_stdout(sys.stderr):
                export_hf(model, model.state_dict(), tokenizer, os.path.join(args.save, task))
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out + ".json", result)
    atomic_write_bytes(args.out + ".md", markdown(result).encode())
    update_finetune(card_dir(args.model), result)  # the exported model's card (README.md)
    print(markdown(result), end="")
    print(f"wrote {args.out}.json and {args.out}.md ({result['seconds']}s)", file=sys.stderr)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.print_config:
        sys.stdout.write(config.dump(config.updated(config.Config(), config.namespace_values(args)), "finetune"))
        return 0
    run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="babylm-ds finetune"))

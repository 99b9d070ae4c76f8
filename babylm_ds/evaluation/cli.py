"""`babylm-ds eval`: zero-shot BLiMP / supplement / EWoK, the BEAR probe (+ optional dev perplexity) of one model."""
import argparse
import contextlib
import importlib.metadata
import os
import pathlib
import sys
import time

from babylm_ds.models.card import card_dir, update_scores
from babylm_ds.models.manifest import add_verify_arg
from babylm_ds.utils.cli import run_cli
from babylm_ds.utils.io import sha256_file

from . import bear, report
from .data import BENCHMARKS, resolve_dir
from .load import load_model, model_name, resolve_device
from .perplexity import perplexity
from .zeroshot import accuracies, item_decisions


def build_parser():
    p = argparse.ArgumentParser(prog="babylm-ds eval", description=__doc__)
    p.add_argument("--model", required=True, help="HF model dir, training output dir, or DeepSpeed checkpoint dir")
    add_verify_arg(p)
    p.add_argument("--tasks", default=",".join(BENCHMARKS),
                   help="comma list of blimp, supplement, ewok or BENCH/PARADIGM (ewok adds ewok_swap), "
                        "bear, bear_lite")
    p.add_argument("--limit", type=int, default=None,
                   help="first N items per paradigm / instances per BEAR relation (default: all, ≈20 min on 2 CPU "
                        "cores for a 3M model)")
    p.add_argument("--bear-limit", type=int, default=None,
                   help="first N instances per BEAR relation (default: --limit)")
    p.add_argument("--harness", action="store_true",
                   help="score with lm-evaluation-harness and the shipped task configs (no ewok_swap); same accuracies")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir", default=None,
                   help="eval data (default: the embedded data/eval; or BabyLM's evaluation_data/full_eval)")
    p.add_argument("--babylm-results", default=None, metavar="DIR",
                   help="also write the BabyLM evaluation pipeline's predictions.json files under DIR (all items)")
    p.add_argument("--ppl-data", default=None, help="prepared data dir: also report its --ppl-split perplexity")
    p.add_argument("--ppl-split", default="dev")
    p.add_argument("--ppl-max-seqs", type=int, default=None)
    p.add_argument("--out", default=None, help="writes OUT.json and OUT.md (default: MODEL/eval/zeroshot)")
    p.add_argument("--name", default=None, help="column name in the table (default: the model dir name)")
    p.add_argument("--tb-dir", default=None, help="also log zeroshot/<bench> scalars to this TensorBoard dir")
    p.add_argument("--step", type=int, default=0, help="TensorBoard step")
    p.add_argument("--items", action="store_true",
                   help="also save per-pair (BEAR: per-item) correctness and per-window dev losses in OUT.json "
                        "(for intervals)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def run(args):
    if any(n is not None and n < 1 for n in (args.limit, args.bear_limit)):
        raise ValueError("--limit and --bear-limit must be >= 1")
    bear_limit = args.limit if args.bear_limit is None else args.bear_limit
    if args.babylm_results and (args.harness or args.limit):
        raise ValueError("--babylm-results needs every item scored by babylm-ds: drop --limit and --harness")
    tasks = [t for t in args.tasks.split(",") if t]
    bear_tasks, tasks = [t for t in tasks if t in bear.TASKS], [t for t in tasks if t not in bear.TASKS]
    if (unknown := [t for t in tasks if t.partition("/")[0] not in BENCHMARKS]) or not (tasks or bear_tasks):
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(BENCHMARKS)} (or BENCH/PARADIGM), "
                         f"{', '.join(bear.TASKS)}")
    if bear_tasks and args.harness:
        raise ValueError("--harness scores blimp, supplement and ewok only; score bear without it")
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    resolve_dir(args.data_dir)  # fail before loading the model
    relations = bear.read_bear(args.data_dir) if bear_tasks else None
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    device = resolve_device(args.device)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for results (deepspeed logs there)
        model, tokenizer = load_model(args.model, device=device, verify=not args.no_verify)
    if args.harness:
        from .harness import evaluate_harness

        result = evaluate_harness(model, tokenizer, tasks, args.limit, args.batch_size, args.data_dir)[0]
        result["harness"] = f"lm-eval {importlib.metadata.version('lm_eval')}"
    else:
        decisions = item_decisions(model, tokenizer, tasks, args.limit, args.batch_size, args.data_dir, device,
                                   progress=True) if tasks else {}
        result = accuracies(decisions)
        if args.items:
            for bench, paradigms in decisions.items():
                result[bench]["correct"] = {p: [int(x) for x in right] for p, right in paradigms.items()}
        if args.babylm_results:
            from .babylm_pipeline import write_predictions

            paths = write_predictions(args.babylm_results, pathlib.Path(args.model).stem, decisions, args.data_dir)
            print(f"wrote {', '.join(paths)}", file=sys.stderr)
    for task in bear_tasks:
        result.update(bear.evaluate_bear(model, tokenizer, task, bear_limit, args.batch_size, args.data_dir, device,
                                         progress=True, relations=relations, per_item=args.items))
    if args.ppl_data:
        result["perplexity"] = perplexity(model, args.ppl_data, args.ppl_split, max_seqs=args.ppl_max_seqs,
                                          progress=True, per_sequence=args.items)
    manifest = os.path.join(args.model, "manifest.json")
    result.update(model=os.path.abspath(args.model), tasks=args.tasks, limit=args.limit,
                  **({"bear_limit": bear_limit} if bear_tasks else {}),
                  model_manifest_sha256=sha256_file(manifest) if os.path.isfile(manifest) else None)
    result["seconds"] = round(time.time() - t0, 1)
    name = args.name or model_name(args.model)
    out = args.out or os.path.join(args.model, "eval", "zeroshot")
    report.save(out, {name: result})
    update_scores(card_dir(args.model), result)  # the exported model's card (README.md)
    if args.tb_dir:
        report.log_tensorboard(args.tb_dir, result, args.step)
    print(report.markdown_table({name: result}), end="")
    print(f"wrote {out}.json and {out}.md ({result['seconds']}s)", file=sys.stderr)


def main(argv=None):
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="babylm-ds eval"))

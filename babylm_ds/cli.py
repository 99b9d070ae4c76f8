"""`babylm-ds` command line: each subcommand lives with the package it drives."""
import importlib
import sys

from babylm_ds.utils.cli import run_cli

COMMANDS = {
    "prepare": ("babylm_ds.data.cli", "prepare a corpus: clean, tokenizer, pack"),
    "cache": ("babylm_ds.cache.cli", "teacher-logit cache tools (verify, info)"),
    "eval": ("babylm_ds.evaluation.cli", "zero-shot BLiMP / supplement / EWoK, the BEAR probe, perplexity"),
    "finetune": ("babylm_ds.evaluation.finetune",
                 "fine-tune on (Super)GLUE tasks (RTE, WSC, ...) as the BabyLM pipeline"),
    "generate": ("babylm_ds.evaluation.generate", "sample text from a trained model"),
    "study": ("babylm_ds.study.cli", "architectures x learning rates x seeds, KD students, evaluated per epoch"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:10s} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: babylm-ds COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return run_cli(module.main, argv[1:], prog=f"babylm-ds {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())

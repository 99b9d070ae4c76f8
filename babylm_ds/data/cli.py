"""`babylm-ds prepare`: clean a corpus, train the tokenizer, pack token shards."""
import argparse
import sys
import time

from .pack import SHARD_SEQUENCES
from .prepare import prepare_data


def build_parser():
    p = argparse.ArgumentParser(prog="babylm-ds prepare", description=__doc__)
    p.add_argument("--out", required=True, help="output data dir (refused if it exists, unless --force)")
    p.add_argument("--corpus", default=None,
                   help="a .txt(.xz/.gz) file or a directory of them (default: the embedded corpus)")
    p.add_argument("--word-budget", default="10M", help="10M | 100M | N words: refuse a corpus with more (default 10M)")
    p.add_argument("--max-words", type=int, default=None, help="truncate to about N words (deterministic; quick runs)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=16000)
    p.add_argument("--dev-fraction", type=float, default=0.02, help="fraction of documents held out as dev")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev split")
    p.add_argument("--num-proc", type=int, default=2, help="processes for tokenization")
    p.add_argument("--shard-sequences", type=int, default=SHARD_SEQUENCES, help="max sequences per shard")
    p.add_argument("--force", action="store_true", help="replace an existing output dir (atomically)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.time()
    meta = prepare_data(args.out, corpus=args.corpus, word_budget=args.word_budget, seq_len=args.seq_len,
                        vocab_size=args.vocab_size, dev_fraction=args.dev_fraction, seed=args.seed,
                        num_proc=args.num_proc, max_words=args.max_words, force=args.force,
                        shard_sequences=args.shard_sequences)
    tr, dev = meta["splits"]["train"], meta["splits"]["dev"]
    print(f"prepared {args.out} in {time.time() - t0:.1f}s: {meta['word_count']:,} words "
          f"{meta['word_count_by_source']}, vocab {meta['vocab_size']}, {meta['tokens_per_word']} tokens/word, "
          f"train {tr['num_sequences']:,} x {meta['seq_len']}, dev {dev['num_sequences']:,} x {meta['seq_len']}, "
          f"fingerprint {meta['fingerprint'][:12]}")
    return 0


if __name__ == "__main__":
    from babylm_ds.utils.cli import run_cli
    sys.exit(run_cli(main, prog="babylm-ds prepare"))

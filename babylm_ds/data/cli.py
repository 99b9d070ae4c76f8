"""`babylm-ds prepare`: clean a corpus, train the tokenizer, pack token shards."""
import sys
import time

from babylm_ds.config import parse

from .prepare import prepare_data


def main(argv=None):
    cfg = parse("prepare", argv, __doc__, prog="babylm-ds prepare")
    d, t0 = cfg.data, time.time()
    meta = prepare_data(d.dir, corpus=d.corpus, word_budget=d.word_budget, seq_len=d.seq_len,
                        vocab_size=d.vocab_size, dev_fraction=d.dev_fraction, seed=d.seed,
                        num_proc=d.num_proc, max_words=d.max_words, force=cfg.run.force,
                        shard_sequences=d.shard_sequences)
    tr, dev = meta["splits"]["train"], meta["splits"]["dev"]
    print(f"prepared {d.dir} in {time.time() - t0:.1f}s: {meta['word_count']:,} words "
          f"{meta['word_count_by_source']}, vocab {meta['vocab_size']}, {meta['tokens_per_word']} tokens/word, "
          f"train {tr['num_sequences']:,} x {meta['seq_len']}, dev {dev['num_sequences']:,} x {meta['seq_len']}, "
          f"fingerprint {meta['fingerprint'][:12]}")
    return 0


if __name__ == "__main__":
    from babylm_ds.utils.cli import run_cli
    sys.exit(run_cli(main, prog="babylm-ds prepare"))

"""BabyLM data pipeline: per-source cleaning, word budget, byte-level BPE, packed uint16 shards."""
from .corpus import EMBEDDED_CORPUS, count_words, detect_source, read_corpus
from .pack import PackedDataset, load_meta, verify_data
from .prepare import parse_word_budget, prepare_data
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer, tokenizer_hash, train_tokenizer

__all__ = ["EMBEDDED_CORPUS", "detect_source", "read_corpus", "PackedDataset", "load_meta", "verify_data",
           "count_words", "parse_word_budget", "prepare_data", "BOS_ID", "EOS_ID", "PAD_ID",
           "load_tokenizer", "tokenizer_hash", "train_tokenizer"]

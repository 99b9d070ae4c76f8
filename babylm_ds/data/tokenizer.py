"""Byte-level BPE tokenizer (NFKC, ByteLevel pre-tokenizer/decoder, <pad>/<s>/</s> = 0/1/2).

The tokenizer adds no special tokens by itself: prepend `tokenizer.bos_token_id` where a
sequence should start like a training document does."""
import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def train_tokenizer(texts, vocab_size=16000, min_frequency=2):
    """Train a byte-level BPE on an iterable of strings; returns a PreTrainedTokenizerFast."""
    if vocab_size > 65536:
        raise ValueError(f"vocab_size {vocab_size} > 65536 does not fit the uint16 token shards")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} must be >= {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tokenizer_hash(tokenizer):
    """sha256 of the canonical (sorted-keys, compact) tokenizer.json without its post-processor: the
    special tokens a tokenizer adds (an export adds BOS, see `models.remote_code.with_bos`) do not change
    how text maps to ids, and babylm-ds never asks for them."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("post_processor", None)
    canon = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def load_tokenizer(data_dir):
    """The PreTrainedTokenizerFast saved in `data_dir/tokenizer/`."""
    path = Path(data_dir) / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json: is {data_dir} a prepared data dir?")
    return PreTrainedTokenizerFast.from_pretrained(str(path))

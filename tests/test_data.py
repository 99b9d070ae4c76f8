import gzip
import random
import shutil

import numpy as np
import pytest
import torch

from babylm_ds import cli
from babylm_ds.data import (
    EMBEDDED_CORPUS,
    PackedDataset,
    count_words,
    detect_source,
    load_meta,
    load_tokenizer,
    parse_word_budget,
    prepare_data,
    read_corpus,
    tokenizer_hash,
    verify_data,
)
from babylm_ds.data.clean import clean
from babylm_ds.data.corpus import read_text
from babylm_ds.data.prepare import split_documents

SMALL = dict(vocab_size=300, seq_len=32, num_proc=1)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """≈3k words of the embedded corpus as a plain directory (no decompressing the whole corpus)."""
    root = tmp_path_factory.mktemp("corpus")
    for name, lines in (("gutenberg/carroll-alice.txt.xz", 120), ("childes/childes.txt.xz", 400),
                        ("switchboard/switchboard.txt.xz", 60)):
        text = "\n".join(read_text(EMBEDDED_CORPUS / name).split("\n")[:lines])
        _write(root / name[:-3], text)
    return root


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _random_text(n_words, seed=0, per_line=9, per_doc=40):
    rng = random.Random(seed)
    vocab = "the cat dog saw a ball big red ran home and then it was".split()
    lines = [" ".join(rng.choice(vocab) for _ in range(per_line)) + "." for _ in range(n_words // per_line)]
    docs = ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]
    return "\n\n".join(docs) + "\n", per_line * len(lines)


# --- word budget and counts ---

def test_parse_word_budget():
    assert parse_word_budget("10M") == 10_000_000
    assert parse_word_budget("100M") == 100_000_000
    assert parse_word_budget("2.5m") == 2_500_000
    assert parse_word_budget("500k") == 500_000
    assert parse_word_budget(12345) == 12345
    for bad in ("ten", "-5", "0", "10G", ""):
        with pytest.raises(ValueError, match="word budget"):
            parse_word_budget(bad)


def test_budget_enforced(tmp_path):
    text, n = _random_text(2000)
    corpus = _write(tmp_path / "story.txt", text)
    with pytest.raises(ValueError, match=f"corpus has {n:,} words, over the word budget of {n - 1:,}"):
        prepare_data(tmp_path / "over", corpus=corpus, word_budget=n - 1, vocab_size=300, seq_len=16, num_proc=1)
    assert not (tmp_path / "over").exists()
    meta = prepare_data(tmp_path / "ok", corpus=corpus, word_budget=n, vocab_size=300, seq_len=16, num_proc=1)
    assert meta["word_count"] == n == sum(s["word_count"] for s in meta["splits"].values())
    assert meta["word_count_by_source"] == {"generic": n}


def test_budget_via_cli(tmp_path, capsys, small_corpus):
    n = sum(count_words(d) for _, _, ds in read_corpus(small_corpus) for d in ds)
    rc = cli.main(["prepare", "--out", str(tmp_path / "o"), "--corpus", str(small_corpus), "--word-budget", "1k"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "\n" not in err and "Traceback" not in err
    assert f"corpus has {n:,} words, over the word budget of 1,000" in err
    rc = cli.main(["prepare", "--out", str(tmp_path / "o"), "--corpus", str(small_corpus), "--word-budget", str(n),
                   "--vocab-size", "300", "--seq-len", "32", "--num-proc", "1"])
    assert rc == 0 and load_meta(tmp_path / "o")["word_count"] == n


@pytest.fixture(scope="module")
def tiny_files(tiny_data_dir):
    """The cleaned, truncated documents behind `tiny_data_dir`."""
    return read_corpus(None, max_words=load_meta(tiny_data_dir)["max_words"])


def test_word_counts_and_max_words(tiny_data_dir, tiny_files):
    assert count_words(" a\tb\n\nc  d-e ") == 4
    meta = load_meta(tiny_data_dir)
    assert 39_900 <= meta["word_count"] <= 40_000
    files = tiny_files
    by_source = {}
    for source, _, docs in files:
        by_source[source] = by_source.get(source, 0) + sum(len(d.split()) for d in docs)
    assert meta["word_count_by_source"] == by_source and set(by_source) == {"gutenberg", "childes", "switchboard"}
    assert meta["word_count"] == sum(s["word_count"] for s in meta["splits"].values())
    # proportional to the embedded corpus: gutenberg ~71%, childes ~27%, switchboard ~2%
    assert 0.65 < by_source["gutenberg"] / meta["word_count"] < 0.77


# --- tokenizer ---

def test_tokenizer_special_ids_and_roundtrip(tiny_data_dir):
    tok = load_tokenizer(tiny_data_dir)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<s>", "</s>"]
    assert len(tok) == load_meta(tiny_data_dir)["vocab_size"] == 1000
    for text in ("Hello, world! The cat's 3 hats.\nA: yes, uh-huh.", "Ünïcödé ☃ 漢字 \t  spaces", "<s>x</s>"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok("the dog")["input_ids"] == tok("the dog", add_special_tokens=False)["input_ids"]  # no auto bos/eos
    assert tok("<s>")["input_ids"] == [1]
    assert tokenizer_hash(tok) == load_meta(tiny_data_dir)["tokenizer_hash"]


def test_tokenizer_hash_ignores_added_special_tokens_only(tiny_data_dir):
    """An exported run's tokenizer adds BOS (with_bos): the same tokenizer for teachers and students."""
    from babylm_ds.models.remote_code import with_bos

    tok = load_tokenizer(tiny_data_dir)
    exported = with_bos(tok)
    assert exported("the dog")["input_ids"][0] == 1 and tok("the dog")["input_ids"][0] != 1
    assert tokenizer_hash(exported) == tokenizer_hash(tok)
    other = load_tokenizer(tiny_data_dir)
    other.add_tokens(["zzqx"])
    assert tokenizer_hash(other) != tokenizer_hash(tok)


# --- packing ---

def test_packing_matches_reference(tiny_data_dir, tiny_files):
    """Shards equal an independent re-tokenization: [<s> doc </s>]* concatenated, cut in windows."""
    meta, tok = load_meta(tiny_data_dir), load_tokenizer(tiny_data_dir)
    docs = [d for _, _, ds in tiny_files for d in ds]
    train, dev = split_documents([len(d.split()) for d in docs], meta["dev_fraction"], meta["seed"], meta["seq_len"])
    assert meta["splits"]["dev"]["num_documents"] == len(dev) >= 1
    for split, ids in (("train", train), ("dev", dev)):
        ref = [t for i in ids for t in [1, *tok(docs[i], add_special_tokens=False)["input_ids"], 2]]
        n = len(ref) // meta["seq_len"]
        ds = PackedDataset(tiny_data_dir, split)
        assert len(ds) == n == meta["splits"][split]["num_sequences"]
        got = torch.stack([ds[i]["input_ids"] for i in range(len(ds))]).flatten().tolist()
        assert got == ref[: n * meta["seq_len"]]
        assert meta["splits"][split]["dropped_tokens"] == len(ref) - n * meta["seq_len"]


def test_packing_deterministic_and_seeded(tmp_path, small_corpus):
    a = prepare_data(tmp_path / "a", small_corpus, seed=0, **SMALL)
    b = prepare_data(tmp_path / "b", small_corpus, seed=0, **{**SMALL, "num_proc": 2})
    c = prepare_data(tmp_path / "c", small_corpus, seed=1, dev_fraction=0.2, **SMALL)
    d = prepare_data(tmp_path / "d", small_corpus, seed=2, dev_fraction=0.2, **SMALL)
    assert a["fingerprint"] == b["fingerprint"] and a["tokenizer_hash"] == b["tokenizer_hash"]
    for split in ("train", "dev"):
        shard = f"{split}/shard_00000.bin"
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    assert split_documents([100] * 50, 0.2, 1) != split_documents([100] * 50, 0.2, 2)
    assert split_documents([1, 100, 1, 1], 0.25, 0, min_words=50) == ([0, 2, 3], [1])
    assert c["fingerprint"] != d["fingerprint"]
    assert c["splits"]["dev"]["word_count"] != d["splits"]["dev"]["word_count"]


def test_shard_size_limit(tmp_path, small_corpus):
    meta = prepare_data(tmp_path / "s", small_corpus, shard_sequences=20, **SMALL)
    shards = meta["splits"]["train"]["shards"]
    assert len(shards) > 1 and all(s["num_sequences"] <= 20 for s in shards)
    ds = PackedDataset(tmp_path / "s")
    flat = np.concatenate([np.fromfile(tmp_path / "s" / s["path"], dtype="<u2") for s in shards])
    got = torch.stack([ds[i]["input_ids"] for i in range(len(ds))]).flatten()
    assert torch.equal(got, torch.from_numpy(flat.astype(np.int64)))


# --- cleaning rules ---

def test_clean_gutenberg():
    raw = ("CHAPTER I\n\nIt was certain : that the man\nwalked home ; and _then_ he  sat.\n\n"
           "It was a circum- \nstance, in a paper-\nmill, of\n\n18 OLIVER TWIST.\n\nthe town.\n\n"
           "[Illustration: a dog]\n\nTHE GOLDEN BIRD\n\nA king had a garden.\n\nII. The Period\n\nIt was.\n")
    assert clean(raw, "gutenberg") == [
        "It was certain: that the man walked home; and then he sat.\n"
        "It was a circumstance, in a paper-mill, of the town.",
        "A king had a garden.",
        "It was.",
    ]
    assert clean("CHAPTER 1\n\nOne.\n\nCHAPTER 2\n\nTwo.\n", "gutenberg") == ["One.", "Two."]
    long = ["This paragraph is one long line " + "and it goes on " * 8 + f"({i})." for i in range(3)]
    assert clean("\n".join(long[:2] + ["CHAPTER II"] + long[2:]), "gutenberg") == ["\n".join(long[:2]), long[2]]


def test_clean_childes():
    raw = ("@Begin\n*MOT:\tyou want xxx the ball [= toy] ?\n%mor:\tpro|you v|want\n"
           "Look &-uh there (.) doggy@c .\nxxx .\n" + "Yes.\n" * 150)
    docs = clean(raw, "childes")
    assert docs[0].split("\n")[:3] == ["you want the ball?", "Look there doggy.", "Yes."]
    assert [len(d.split("\n")) for d in docs] == [100, 52]


def test_clean_switchboard_and_generic():
    raw = "A:\tHello <laughter> there , you.\nB:  Hi.\n\n\nA:\tSecond   call.\n"
    assert clean(raw, "switchboard") == ["A: Hello there, you.\nB: Hi.", "A: Second call."]
    assert clean("one  two\nthree\n\n  four \n", "generic") == ["one two\nthree", "four"]
    assert len(clean("w\n" * 250, "generic")) == 3


def test_detect_source():
    assert detect_source("x/gutenberg/austen-emma.txt.xz") == "gutenberg"
    assert detect_source("babylm_10M/childes.train") == "childes"
    assert detect_source("data/switchboard.txt") == "switchboard"
    assert detect_source("gutenberg/notes/story.txt") == "generic"  # only the file and its folder count
    assert detect_source("mine/story.txt") == "generic"


# --- bad corpora ---

@pytest.mark.parametrize("name,data,msg", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b" \n\n\t\n", "is empty"),
    ("nul.txt", b"hello\x00world" * 10, "binary"),
    ("ctrl.txt", bytes(range(1, 9)) * 50 + b"some text", "binary"),
    ("latin1.txt", "café au lait".encode("latin-1"), "not valid UTF-8"),
    ("broken.txt.xz", b"not xz at all", "decompress"),
])
def test_bad_corpus(tmp_path, capsys, name, data, msg):
    bad = _write(tmp_path / "c" / name, data)
    with pytest.raises(ValueError, match=msg) as e:
        prepare_data(tmp_path / "o", corpus=bad, **SMALL)
    assert name in str(e.value)
    with pytest.raises(ValueError, match=name):  # also when found inside a directory
        read_corpus(tmp_path / "c")
    rc = cli.main(["prepare", "--out", str(tmp_path / "o"), "--corpus", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and name in err and msg in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_missing_corpus_and_empty_dir(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty" / "README.txt", "not corpus")
    with pytest.raises(ValueError, match="no text files"):
        read_corpus(tmp_path / "empty")
    rc = cli.main(["prepare", "--out", str(tmp_path / "o"), "--corpus", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "nope does not exist" in err and "\n" not in err


def test_compressed_and_directory_corpus(tmp_path):
    text, n = _random_text(600)
    _write(tmp_path / "c" / "childes" / "a.txt.gz", gzip.compress(text.encode()))
    _write(tmp_path / "c" / "switchboard.txt", "A:\thi there\nB:\tyes\n")
    _write(tmp_path / "c" / "LICENSE.txt", "ignored words here")
    _write(tmp_path / "c" / "dev" / "childes.dev", "held-out text must never be trained on")
    files = read_corpus(tmp_path / "c")
    assert [(s, f) for s, f, _ in files] == [("childes", "childes/a.txt.gz"), ("switchboard", "switchboard.txt")]
    assert sum(count_words(d) for d in files[0][2]) == n


# --- meta, checksums, dataset, overwrite ---

def test_meta_contract_fields(tiny_data_dir):
    meta = load_meta(tiny_data_dir)
    for key in ("format_version", "tokenizer_hash", "seq_len", "vocab_size", "fingerprint", "word_count", "splits"):
        assert key in meta
    assert meta["seq_len"] == 64 and len(meta["fingerprint"]) == len(meta["tokenizer_hash"]) == 64
    for split in ("train", "dev"):
        info = meta["splits"][split]
        assert info["num_tokens"] == info["num_sequences"] * 64
        assert sum(s["num_sequences"] for s in info["shards"]) == info["num_sequences"]
        assert all(set(s) == {"path", "sha256", "num_sequences"} for s in info["shards"])
    assert meta["splits"]["train"]["num_documents"] + meta["splits"]["dev"]["num_documents"] == meta["num_documents"]


def test_verify_detects_flipped_byte(tiny_data_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_data_dir, d, ignore=shutil.ignore_patterns("cache"))
    meta = verify_data(d)
    assert meta["fingerprint"] == load_meta(tiny_data_dir)["fingerprint"]
    shard = d / meta["splits"]["train"]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[1001] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_data(d)
    data[1001] ^= 0x01
    shard.write_bytes(bytes(data))
    verify_data(d)
    tj = d / "tokenizer" / "tokenizer.json"
    tj.write_text(tj.read_text().replace('"<s>"', '"<S>"', 1))
    with pytest.raises(ValueError, match="tokenizer_hash"):
        verify_data(d)


def test_packed_dataset(tiny_data_dir):
    meta = load_meta(tiny_data_dir)
    ds = PackedDataset(tiny_data_dir, "train")
    assert len(ds) == meta["splits"]["train"]["num_sequences"] > 1000
    item = ds[5]
    assert item["idx"] == 5 and item["input_ids"].dtype == torch.long and item["input_ids"].shape == (64,)
    assert ds[0]["input_ids"][0] == 1 and ds[-1]["idx"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["input_ids"].shape == (4, 64) and batch["idx"].tolist() == [0, 1, 2, 3]
    all_ids = torch.stack([ds[i]["input_ids"] for i in range(len(ds))])
    assert all_ids.max() < meta["vocab_size"] and (all_ids == 2).sum() >= 1
    assert len(PackedDataset(tiny_data_dir, "dev")) == meta["splits"]["dev"]["num_sequences"] > 0
    with pytest.raises(ValueError, match="split"):
        PackedDataset(tiny_data_dir, "test")


def test_refuses_overwrite(tmp_path, capsys, small_corpus):
    out = tmp_path / "o"
    first = prepare_data(out, small_corpus, **SMALL)
    with pytest.raises(FileExistsError, match="--force"):
        prepare_data(out, small_corpus, **SMALL)
    rc = cli.main(["prepare", "--out", str(out), "--corpus", str(small_corpus), "--vocab-size", "300"])
    assert rc != 0 and "already exists" in capsys.readouterr().err
    again = prepare_data(out, small_corpus, force=True, **{**SMALL, "seq_len": 16})
    assert again["seq_len"] == 16 and load_meta(out)["fingerprint"] == again["fingerprint"] != first["fingerprint"]
    assert verify_data(out) and len(PackedDataset(out)) == again["splits"]["train"]["num_sequences"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temp dirs left behind

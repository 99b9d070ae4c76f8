import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A small prepared data dir, built once per test session (3-5 s): the first ≈40,000 words of
    the embedded corpus (`max_words=40_000`, split over gutenberg/childes/switchboard in
    proportion to their size), `vocab_size=1000`, `seq_len=64`, `dev_fraction=0.05`, `seed=0`,
    `num_proc=1`. Gives 39,998 words, 1,147 train and 27 dev windows of 64 tokens, vocab 1000,
    1.88 tokens/word (see its meta.json).
    Read it with `babylm_ds.data.PackedDataset(d, "train"|"dev")`, `load_tokenizer(d)`,
    `load_meta(d)`; treat it as read-only (it is shared by all tests)."""
    from babylm_ds.data import prepare_data

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_data(out, max_words=40_000, vocab_size=1000, seq_len=64, dev_fraction=0.05, seed=0, num_proc=1)
    return out

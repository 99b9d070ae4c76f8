"""(Super)GLUE fine-tuning: the classification heads, `babylm-ds finetune` on 64 RTE examples (loss, predictions,
the exported classifier in a process without babylm_ds), the embedded data and the bad-input errors."""
import json
import lzma
import os
import shutil
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

from babylm_ds import cli as babylm_cli
from babylm_ds.data import load_tokenizer
from babylm_ds.evaluation.finetune import encode
from babylm_ds.evaluation.glue import TASKS, read_split
from babylm_ds.evaluation.load import load_classifier
from babylm_ds.models import (
    BabyHGRNConfig,
    BabyHGRNForCausalLM,
    BabyHGRNForSequenceClassification,
    BabyLSTMConfig,
    BabyLSTMForSequenceClassification,
)
from babylm_ds.training.trainer import export_hf
from test_export import HIDE, _python

SMALL = {"babyhgrn": (BabyHGRNConfig, dict(hidden_size=64, num_hidden_layers=2, expand_ratio=16, intermediate_size=96)),
         "lstm": (BabyLSTMConfig, dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2))}
CARD = {"name": "lm", "data": {"dir": "/d", "corpus": "embedded", "word_budget": 10_000_000, "words": 40_000,
                               "words_by_source": {"childes": 40_000}, "tokens_per_word": 1.9, "seq_len": 64,
                               "vocab_size": 1000, "train_sequences": 9},
        "training": {"command": "python launchers/pretrain.py", "steps": 1, "world_size": 1, "train_tokens": 64,
                     "train_loss": 6.9, "dev_loss": 6.9, "seed": 0, "lr": 3e-3, "schedule": "cosine", "micro_batch": 1,
                     "grad_accum": 1, "zero_stage": 2, "bf16": False}}


@pytest.mark.parametrize("family", list(SMALL))
def test_classifier_registered_and_reads_the_last_real_token(family):
    """`import babylm_ds` registers the head with AutoModelForSequenceClassification; a right-padded batch gives each
    sequence's logits alone, = score(base model's state at its last token); the loss is cross-entropy."""
    config_cls, kw = SMALL[family]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config_cls(vocab_size=101, num_labels=3, **kw)).eval()
    classes = {"babyhgrn": BabyHGRNForSequenceClassification, "lstm": BabyLSTMForSequenceClassification}
    assert type(model) is classes[family]
    seqs = [torch.randint(3, 101, (n,)) for n in (11, 4, 7)]
    ids = torch.zeros(3, 11, dtype=torch.long)  # pad id 0, on the right
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        out = model(ids, attention_mask=(ids != 0).long(), labels=labels)
        by_pad_id = model(ids).logits
        alone = torch.cat([model.score(model.model(s[None]).last_hidden_state[:, -1]) for s in seqs])
    torch.testing.assert_close(out.logits, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_pad_id, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(alone, labels), rtol=1e-5, atol=1e-5)


def test_load_classifier_uses_transformers_classes_and_refuses_mamba(tmp_path, tiny_data_dir):
    tok = load_tokenizer(tiny_data_dir)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, pad_token_id=0))
    export_hf(llama, llama.state_dict(), tok, str(tmp_path / "llama"))
    model, _ = load_classifier(tmp_path / "llama", 2)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 2
    torch.testing.assert_close(model.model.embed_tokens.weight, llama.model.embed_tokens.weight)
    mamba = MambaForCausalLM(MambaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, pad_token_id=0))
    export_hf(mamba, mamba.state_dict(), tok, str(tmp_path / "mamba"))
    with pytest.raises(ValueError, match="no sequence-classification class for model_type 'mamba'"):
        load_classifier(tmp_path / "mamba", 2)


def test_embedded_rte_and_wsc():
    """The BabyLM layout of SuperGLUE RTE / WSC (train, and the whole SuperGLUE validation set as valid)."""
    sizes = {("rte", "train"): 2490, ("rte", "valid"): 277, ("wsc", "train"): 554, ("wsc", "valid"): 104}
    for (task, split), n in sizes.items():
        pairs, labels = read_split(task, split)
        assert len(pairs) == len(labels) == n and set(labels) == {0, 1}
        assert all(a and b for a, b in pairs)
    pairs, labels = read_split("wsc", "train")
    assert pairs[0] == ('Does "He" refer to "Mark" in this passage?', "Mark told Pete many lies about himself, which "
                        "Pete included in his book. He should have been more skeptical.") and labels[0] == 0
    assert read_split("rte", "valid")[1].count(0) == 146  # entailment = 0: majority 52.7%


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tiny_data_dir):
    """A small BabyHGRN exported as the trainer exports it (tokenizer, generated code, card)."""
    torch.manual_seed(0)
    model = BabyHGRNForCausalLM(BabyHGRNConfig(vocab_size=1000, **SMALL["babyhgrn"][1]))
    out = tmp_path_factory.mktemp("lm") / "final"
    export_hf(model, model.state_dict(), load_tokenizer(tiny_data_dir), str(out), CARD)
    return out


def mean_loss(model, ids, labels):
    with torch.no_grad():
        return sum(F.cross_entropy(model(torch.tensor([x])).logits, torch.tensor([y])).item()
                   for x, y in zip(ids, labels, strict=True)) / len(ids)


LOAD = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    batch = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save({"logits": logits, "class": type(model).__module__ + "." + type(model).__name__,
                "babylm_ds": sorted(m for m in sys.modules if m.startswith("babylm_ds"))}, sys.argv[3])
""")


def test_finetune_rte_64_examples(lm_dir, tmp_path):
    """One epoch on 64 RTE examples: the training loss falls, the kept classifier's valid predictions are written in
    the BabyLM layout and scored right, and the exported classifier gives the same logits where babylm_ds is absent."""
    out, save, results = tmp_path / "ft", tmp_path / "models", tmp_path / "results"
    argv = ["finetune", "--model", str(lm_dir), "--tasks", "rte", "--max-train", "64", "--epochs", "1",
            "--batch-size", "8", "--lr", "3e-3", "--seq-len", "96", "--out", str(out), "--save", str(save),
            "--babylm-results", str(results), "--threads", "1"]
    assert babylm_cli.main(argv) == 0
    result = json.loads((tmp_path / "ft.json").read_text())
    rte = result["tasks"]["rte"]
    assert (rte["n_train"], rte["n_valid"], rte["epochs"], rte["best_epoch"], rte["steps"]) == (64, 277, 1, 1, 8)
    assert all(0 <= rte[k] <= 1 for k in ("accuracy", "f1", "majority")) and -1 <= rte["mcc"] <= 1
    assert rte["majority"] == pytest.approx(146 / 277) and result["settings"]["lr"] == 3e-3
    assert "| rte |" in (tmp_path / "ft.md").read_text()

    pairs, labels = read_split("rte", "train")
    torch.manual_seed(42)  # the seed finetune initialises the head with
    before, tok = load_classifier(lm_dir, 2)
    after = AutoModelForSequenceClassification.from_pretrained(save / "rte").eval()
    ids = encode(tok, pairs[:64], 96)
    assert mean_loss(after, ids, labels[:64]) < mean_loss(before.eval(), ids, labels[:64]) - 0.01

    preds = json.loads((results / "final/main/finetune/rte/predictions.json").read_text())["rte"]["predictions"]
    valid_pairs, valid_labels = read_split("rte", "valid")
    assert [p["id"] for p in preds] == [f"rte_{i}" for i in range(277)]
    valid_ids = encode(tok, valid_pairs, 96)
    with torch.no_grad():
        again = [after(torch.tensor([x])).logits.argmax(-1).item() for x in valid_ids]
    assert [p["pred"] for p in preds] == again
    assert rte["accuracy"] == pytest.approx(sum(p == y for p, y in zip(again, valid_labels, strict=True)) / 277)
    assert f"accuracy: {rte['accuracy']}" in (results / "final/main/finetune/rte/results.txt").read_text()

    auto_map = json.loads((save / "rte" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_babyhgrn.BabyHGRNForSequenceClassification"
    batch = {"input_ids": torch.zeros(3, 40, dtype=torch.long), "attention_mask": torch.zeros(3, 40, dtype=torch.long)}
    for i, x in enumerate(valid_ids[:3]):
        x = x[:40]
        batch["input_ids"][i, :len(x)], batch["attention_mask"][i, :len(x)] = torch.tensor(x), 1
    torch.save(batch, tmp_path / "batch.pt")
    _python(HIDE + LOAD, save / "rte", tmp_path / "batch.pt", tmp_path / "got.pt", cwd=tmp_path)
    got = torch.load(tmp_path / "got.pt")
    assert got["babylm_ds"] == [] and got["class"].endswith("modeling_babyhgrn.BabyHGRNForSequenceClassification")
    after.config.backend = "torch"  # the backend the clean process falls back to
    with torch.no_grad():
        assert torch.equal(got["logits"], after(**batch).logits)

    card = (lm_dir / "README.md").read_text()
    assert "## Fine-tuning ((Super)GLUE)" in card and f"| rte | {100 * rte['accuracy']:.1f} |" in card


def write_glue(folder, task, split, lines):
    os.makedirs(folder / "glue_filtered", exist_ok=True)
    (folder / "glue_filtered" / f"{task}.{split}.jsonl").write_text("\n".join(lines) + "\n")


RTE_ROW = json.dumps({"sentence1": "A dog runs.", "sentence2": "An animal runs.", "label": 0, "idx": 0})


@pytest.mark.parametrize("case", ["unknown task", "missing file", "malformed line", "label outside", "missing field"])
def test_bad_input_is_one_line_naming_the_file_before_the_model(case, tmp_path, capsys):
    """Every data problem is found before the model is loaded (here it does not even exist)."""
    data = tmp_path / "eval"
    write_glue(data, "rte", "train", [RTE_ROW] * 4)
    valid = {"unknown task": [RTE_ROW], "missing file": None, "malformed line": [RTE_ROW, "{not json"],
             "label outside": [RTE_ROW, RTE_ROW.replace('"label": 0', '"label": 2')],
             "missing field": [RTE_ROW, RTE_ROW.replace("sentence2", "hypothesis")]}[case]
    if valid is not None:
        write_glue(data, "rte", "valid", valid)
    tasks = "rte,cola" if case == "unknown task" else "rte"
    rc = babylm_cli.main(["finetune", "--model", str(tmp_path / "no-model"), "--tasks", tasks, "--data-dir", str(data),
                          "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("babylm-ds finetune: error: "), err
    where = os.path.join(str(data), "glue_filtered", "rte.valid.jsonl")
    expected = {"unknown task": "unknown fine-tuning task(s) ['cola']", "missing file": f"{where} not found",
                "malformed line": f"{where}:2: not valid JSON", "label outside": f"{where}:2: label 2 is outside rte's "
                "label set [0, 1]", "missing field": f"{where}:2: a rte line needs the fields"}[case]
    assert expected in err and not (tmp_path / "out.json").exists()


def test_good_data_then_a_missing_model_is_one_line(tmp_path, capsys):
    rc = babylm_cli.main(["finetune", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "is not an exported HF model dir" in err, err


def test_task_table_follows_the_babylm_pipeline():
    assert set(TASKS) == {"boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc"}
    assert {t for t, s in TASKS.items() if s.select_on == "f1"} == {"mrpc", "qqp"}
    assert {t: s.batch_size for t, s in TASKS.items() if s.batch_size != 32} == {"boolq": 16, "multirc": 16}
    assert {t: s.epochs for t, s in TASKS.items() if s.epochs != 10} == {"wsc": 30} and TASKS["mnli"].num_labels == 3
    row = {"question": "Is it?", "answer": "yes", "paragraph": "It is.", "label": 1}
    assert TASKS["multirc"].pair(row) == ("Question: Is it? Answer: yes", "It is.")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "eval", "glue_filtered")
    with lzma.open(os.path.join(path, "rte.valid.jsonl.xz"), "rt") as f:
        assert list(json.loads(f.readline())) == ["sentence1", "sentence2", "label", "idx"]


def test_model_folder_is_verified_unless_no_verify(lm_dir, tmp_path, capsys):
    """finetune checks the folder against its manifest.json before loading (one line naming the file);
    --no-verify skips the check and fine-tunes it."""
    bad = tmp_path / "edited" / "final"
    shutil.copytree(lm_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["model.safetensors"]["sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    argv = ["finetune", "--model", str(bad), "--tasks", "rte", "--max-train", "8", "--epochs", "1", "--batch-size", "8",
            "--seq-len", "32", "--out", str(tmp_path / "ft"), "--threads", "1"]
    assert babylm_cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"babylm-ds finetune: error: {bad}/model.safetensors does not match its sha256 in manifest.json "
                   "(corrupted, or manifest.json was edited); copy the folder again or re-export it"]
    assert not (tmp_path / "ft.json").exists()
    assert babylm_cli.main([*argv, "--no-verify"]) == 0 and (tmp_path / "ft.json").exists()

"""Zero-shot scorer, eval data readers, CLI errors and generation (< 60 s on 2 cores)."""
import json
import lzma
import math
import os
import types
import zipfile

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from babylm_ds import cli as babylm_cli
from babylm_ds.evaluation import cli as eval_cli, evaluate_model, load_tasks, read_benchmark, score_texts
from babylm_ds.evaluation.generate import generate

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "the", "cat", "dog", "sleeps", "runs", "A", "B", ":"]
V = len(WORDS)
W = {w: i for i, w in enumerate(WORDS)}
HALF = math.log(V - 1)  # a logit bump that gives its token p = 1/2 (all other logits 0)


def word_tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


class Bigram(torch.nn.Module):
    """logits[t] = table[token t]: log-probs are known in closed form."""

    def __init__(self, bumps):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(V, V))
        with torch.no_grad():
            for (a, b), value in bumps.items():
                self.table[W[a], W[b]] = value
        self.config = types.SimpleNamespace(bos_token_id=1)

    def forward(self, input_ids):
        return types.SimpleNamespace(logits=self.table[input_ids])


def test_hand_computed_scores_count_bos_conditioned_first_token():
    model = Bigram({("<s>", "the"): HALF, ("the", "cat"): HALF})
    s = score_texts(model, word_tokenizer(), [("", "the cat"), ("", "the dog"), ("the", " cat"), ("", "cat")],
                    batch_size=3)
    low = -math.log(2 * (V - 1))  # p of a non-bumped token in a bumped row
    assert s == pytest.approx([2 * math.log(0.5), math.log(0.5) + low, math.log(0.5), low], abs=1e-5)


def write_jsonl(path, rows, xz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with (lzma.open if xz else open)(path, "wb") as f:
        f.write(data)


@pytest.fixture
def toy_eval_dir(tmp_path):
    """BabyLM's layout (evaluation_data/full_eval/...), plain and xz jsonl, EWoK as a jsonl folder."""
    root, tmp_path = tmp_path, tmp_path / "full_eval"
    pair = lambda good, bad: {"sentence_good": good, "sentence_bad": bad}  # noqa: E731
    write_jsonl(tmp_path / "blimp_filtered" / "first_word.jsonl", [pair("dog sleeps", "cat sleeps")])
    write_jsonl(tmp_path / "blimp_filtered" / "ties.jsonl", [pair("the cat", "the cat"), pair("dog", "cat")])
    write_jsonl(tmp_path / "supplement_filtered" / "dialogue.jsonl.xz",
                [pair("A: the cat\nB: runs", "A: the dog\nB: runs")], xz=True)
    item = {"Context1": "the cat", "Context2": "the dog", "Target1": "sleeps", "Target2": "runs"}
    write_jsonl(tmp_path / "ewok_filtered" / "toy-domain.jsonl", [item])
    return str(root)


def test_accuracies_ties_and_ewok_on_known_model(toy_eval_dir):
    # Without the BOS-conditioned first token, "cat sleeps" would win (bump on cat->sleeps).
    model = Bigram({("<s>", "dog"): 3.0, ("cat", "sleeps"): 1.0, ("cat", "runs"): 0.5, ("dog", "runs"): 0.5,
                    ("the", "dog"): 1.0})
    res = evaluate_model(model, word_tokenizer(), data_dir=toy_eval_dir, batch_size=2)
    assert res["blimp"]["paradigms"] == {"first_word": 1.0, "ties": 1.0}  # ties count as right
    assert res["supplement"]["paradigms"] == {"dialogue": 0.0}  # p(dog | the) > p(cat | the)
    assert {b: res[b]["pairs"] for b in ("blimp", "supplement", "ewok", "ewok_swap")} == \
        {"blimp": 3, "supplement": 1, "ewok": 1, "ewok_swap": 1}
    assert res["ewok"]["mean"] == 1.0 and res["ewok_swap"]["mean"] == 1.0
    assert res["macro"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_supplement_newlines_kept_and_embedded_counts():
    sup = load_tasks("supplement")["supplement"]
    assert sorted(sup) == ["hypernym", "qa_congruence_easy", "qa_congruence_tricky", "subject_aux_inversion",
                           "turn_taking"]
    assert sum(map(len, sup.values())) == 5218
    assert any("\n" in good for _, good, _, _ in sup["turn_taking"])
    blimp = load_tasks("blimp", limit=3)["blimp"]
    assert len(blimp) == 67 and all(len(v) == 3 for v in blimp.values())


def test_ewok_zip_read_in_memory(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("EWoK must not be extracted to disk")

    monkeypatch.setattr(zipfile.ZipFile, "extract", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", refuse)
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    ewok = read_benchmark("ewok")
    assert len(ewok) == 11 and sum(map(len, ewok.values())) == 7618
    assert set(os.listdir(tmp_path)) == before
    tasks = load_tasks(["ewok/physical-dynamics"], limit=2)
    assert set(tasks) == {"ewok", "ewok_swap"} and len(tasks["ewok"]["physical-dynamics"]) == 2
    c1, t1, c1b, t2 = tasks["ewok"]["physical-dynamics"][0]
    assert c1 == c1b and t1.startswith(" ") and t2.startswith(" ") and t1 != t2


def test_bad_task_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        load_tasks("glue")
    with pytest.raises(ValueError, match="unknown blimp paradigm"):
        load_tasks("blimp/nope")
    with pytest.raises(FileNotFoundError, match="no ewok data"):
        load_tasks("ewok", data_dir=str(tmp_path))


def bpe_tokenizer(vocab_size=300):
    lines = [good for rows in read_benchmark("blimp").values() for good in (r["sentence_good"] for r in rows[:30])]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    tokenizer = bpe_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval(), tokenizer


def test_scorer_matches_plain_transformers_loop(tiny_llama):
    model, tok = tiny_llama
    texts = [("", "Who should Derek hug after shocking Richard?"), ("", "A: Should you quit?\nB: No."),
             ("The cup fell.", " It broke."), ("", "Hi"), ("The boys that the girl sees are tall.", " Yes")]
    got = score_texts(model, tok, texts, batch_size=2)
    for (prefix, cont), s in zip(texts, got, strict=True):
        p = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        ids = torch.tensor([[tok.bos_token_id] + p + tok(cont, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        ref = sum(logp[t, ids[0, t + 1]].item() for t in range(len(p), ids.shape[1] - 1))
        assert s == pytest.approx(ref, abs=1e-4)


def test_evaluate_model_embedded_subset_and_cli(tiny_llama, tmp_path):
    model, tok = tiny_llama
    res = evaluate_model(model, tok, limit=2, batch_size=32)
    assert len(res["blimp"]["paradigms"]) == 67 and len(res["ewok"]["paradigms"]) == 11
    assert all(0 <= a <= 1 for b in ("blimp", "supplement", "ewok", "ewok_swap") for a in res[b]["paradigms"].values())
    assert res["macro"] == pytest.approx(sum(res[b]["mean"] for b in ("blimp", "supplement", "ewok")) / 3)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "res"
    assert eval_cli.main(["--model", str(tmp_path / "m"), "--tasks", "blimp/adjunct_island,ewok", "--limit", "2",
                          "--out", str(out), "--device", "cpu", "--tb-dir", str(tmp_path / "tb"),
                          "--no-verify"]) == 0  # saved here, not exported: no manifest.json
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    saved = json.loads((tmp_path / "res.json").read_text())["m"]
    assert {b: saved[b]["pairs"] for b in ("blimp", "ewok", "ewok_swap")} == {"blimp": 2, "ewok": 22, "ewok_swap": 22}
    assert "supplement" not in saved
    assert "| blimp |" in (tmp_path / "res.md").read_text()
    text = generate(model, tok, "Who should", max_new_tokens=5, greedy=True)
    assert len(text) == 1 and text == generate(model, tok, "Who should", max_new_tokens=5, greedy=True)


@pytest.mark.parametrize("argv", [["--model", "/nonexistent/model"],
                                  ["--model", "{tmp}", "--data-dir", "/nonexistent/data"]])
def test_cli_errors_are_one_line(argv, tmp_path, tiny_llama, capsys):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    capsys.readouterr()
    assert babylm_cli.main(["eval", *[a.format(tmp=tmp_path) for a in argv]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("babylm-ds eval: error:") and "nonexistent" in err[0]

"""lm-evaluation-harness: the shipped task configs score item for item as `babylm-ds eval` does."""
import json
import os

import pytest
import torch

from babylm_ds.evaluation import cli as eval_cli, load_tasks, read_benchmark, score_texts
from babylm_ds.evaluation.harness import TASK_DIR, evaluate_harness, task_files
from babylm_ds.models import BabyHGRNConfig, BabyHGRNForCausalLM
from babylm_ds.training.trainer import export_hf
from test_eval import bpe_tokenizer

TASKS = ["blimp/adjunct_island", "blimp/anaphor_gender_agreement", "supplement/hypernym", "ewok/agent-properties",
         "ewok/social-relations"]


@pytest.fixture(scope="module")
def student():
    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    config = BabyHGRNConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, expand_ratio=16,
                            intermediate_size=96)
    model = BabyHGRNForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model, tokenizer


def test_shipped_task_configs_are_the_generated_ones():
    files = task_files()
    assert len(files) == 3 + 67 + 5 + 11 + 1 + 1  # groups, paradigms, the top group and the template
    shipped = {f for f in os.listdir(TASK_DIR) if f.endswith(("yaml", "_yaml"))}
    assert shipped == set(files)
    for name, text in files.items():
        with open(os.path.join(TASK_DIR, name)) as f:
            assert f.read() == text, f"{name} differs from `python -m babylm_ds.evaluation.harness`"


def test_harness_equals_babylm_eval_item_for_item(student):
    model, tokenizer = student
    result, items = evaluate_harness(model, tokenizer, TASKS, limit=20, batch_size=32)
    pairs = load_tasks(TASKS, limit=20)
    assert sorted(items) == sorted(TASKS)
    for key, got in items.items():
        bench, paradigm = key.split("/")
        good = score_texts(model, tokenizer, [p[:2] for p in pairs[bench][paradigm]])
        bad = score_texts(model, tokenizer, [p[2:] for p in pairs[bench][paradigm]])
        assert [r for r, _, _ in got] == [int(g >= b) for g, b in zip(good, bad, strict=True)], key
        # same strings, same BOS conditioning: the log-likelihoods agree to float rounding
        torch.testing.assert_close(torch.tensor([(g, b) for _, g, b in got]),
                                   torch.tensor(list(zip(good, bad, strict=True))), rtol=1e-5, atol=1e-4)
    assert result["ewok"]["pairs"] == 40 and result["macro"] == pytest.approx(
        sum(result[b]["mean"] for b in ("blimp", "supplement", "ewok")) / 3)


def test_eval_cli_harness_and_lm_eval_hf_loader_on_export(student, tmp_path, monkeypatch):
    """`babylm-ds eval --harness` and lm-eval's `--model hf` with trust_remote_code give
    `babylm-ds eval`'s accuracies on an exported student."""
    model, tokenizer = student
    out = tmp_path / "final"
    export_hf(model, model.state_dict(), tokenizer, str(out))
    tasks = "blimp/adjunct_island,ewok/agent-properties"
    for flag in ([], ["--harness"]):
        assert eval_cli.main(["--model", str(out), "--tasks", tasks, "--limit", "8", "--device", "cpu",
                              "--out", str(tmp_path / f"e{len(flag)}"), "--name", "s", *flag]) == 0
    plain, harness = (json.loads((tmp_path / f"e{i}.json").read_text())["s"] for i in (0, 1))
    assert harness["harness"].startswith("lm-eval 0.4.")
    for bench in ("blimp", "ewok"):
        assert harness[bench]["paradigms"] == plain[bench]["paradigms"]
    # lm_eval's own HF loader on the folder, through its generated code (the CLI takes ≈1 min to index lm-eval's tasks)
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    got = lm_eval.simple_evaluate("hf", f"pretrained={out},trust_remote_code=True,dtype=float32",
                                  ["babylm_blimp_adjunct_island", "babylm_ewok_agent-properties"],
                                  limit=8, batch_size=8, device="cpu",
                                  task_manager=TaskManager(include_path=TASK_DIR, include_defaults=False),
                                  bootstrap_iters=0, log_samples=False)
    assert got["results"]["babylm_blimp_adjunct_island"]["acc,none"] == plain["blimp"]["paradigms"]["adjunct_island"]
    assert got["results"]["babylm_ewok_agent-properties"]["acc,none"] == plain["ewok"]["paradigms"]["agent-properties"]


def test_babylm_pipeline_loader_and_predictions(student, tmp_path):
    """The BabyLM pipeline's causal path on an export: AutoModelForCausalLM / AutoProcessor with
    trust_remote_code, its tokenization (defaults, offsets) scores a sentence as babylm-ds does; and
    --babylm-results writes its predictions.json layout, whose accuracy (pred == good side) is ours."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    from babylm_ds.evaluation.babylm_pipeline import write_predictions
    from babylm_ds.evaluation.zeroshot import item_decisions

    model, tokenizer = student
    out = tmp_path / "final"
    export_hf(model, model.state_dict(), tokenizer, str(out))
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, revision=None).eval()
    processor = AutoProcessor.from_pretrained(out, padding_side="right", revision=None, trust_remote_code=True)
    sentence = "Who should Derek hug after shocking Richard?"
    enc = processor(text=sentence, return_offsets_mapping=True)
    assert enc["input_ids"][0] == tokenizer.bos_token_id and enc["offset_mapping"][0] == (0, 0)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(loaded(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum().item()
    assert logp == pytest.approx(score_texts(model, tokenizer, [("", sentence)])[0], abs=1e-4)

    tasks = ["supplement/qa_congruence_easy", "ewok/physical-dynamics"]
    decisions = item_decisions(model, tokenizer, tasks)
    [supp, ewok] = write_predictions(str(tmp_path / "results"), "final", decisions)
    assert supp.endswith("final/main/zero_shot/causal/blimp/supplement_filtered/predictions.json")
    assert ewok.endswith("final/main/zero_shot/causal/ewok/ewok_filtered/predictions.json")
    for path, bench, paradigm, key in ((supp, "supplement", "qa_congruence_easy", "sentence_good"),
                                       (ewok, "ewok", "physical-dynamics", "Target1")):
        preds = json.load(open(path))[paradigm]["predictions"]
        rows = read_benchmark(bench)[paradigm]
        assert [p["id"] for p in preds] == [f"{paradigm}_{i}" for i in range(len(rows))]
        right = [p["pred"].strip() == row[key].strip() for p, row in zip(preds, rows, strict=True)]
        assert right == decisions[bench][paradigm]
    report = (tmp_path / "results/final/main/zero_shot/causal/ewok/ewok_filtered"
              / "best_temperature_report.txt").read_text()
    acc = 100 * sum(decisions["ewok"]["physical-dynamics"]) / 120
    assert f"physical-dynamics: {acc:.2f}" in report
    with pytest.raises(ValueError, match="without --limit|every item"):
        write_predictions(str(tmp_path / "r2"), "final", item_decisions(model, tokenizer, tasks, limit=3))

"""BEAR: the batched scorer against a plain per-sentence loop on two relations, lm-pub-quiz's averaging, the
embedded copy, `babylm-ds eval --tasks bear` and its bad input."""
import json

import pytest
import torch

from babylm_ds import cli as babylm_cli
from babylm_ds.data import load_tokenizer
from babylm_ds.evaluation.bear import evaluate_bear, read_bear
from babylm_ds.models import BabyHGRNConfig, BabyHGRNForCausalLM
from babylm_ds.training.trainer import export_hf
from test_finetune import CARD, SMALL

RELATIONS = {"P30": ["Geographic", "Arts"], "P105": ["Scientific", "Geographic"]}  # domains made up to test weighting


@pytest.fixture(scope="module")
def bear_data(tmp_path_factory):
    """Two relations of the embedded BEAR (first 7 / 5 instances) in a data dir of their own."""
    full = read_bear()
    root = tmp_path_factory.mktemp("eval")
    folder = root / "bear" / "BEAR"
    folder.mkdir(parents=True)
    meta = {}
    for rel, n in (("P30", 7), ("P105", 5)):
        r = full[rel]
        meta[rel] = {"templates": r["templates"], "answer_space_labels": r["answers"],
                     "answer_space_ids": [f"Q{i}" for i in range(len(r["answers"]))]}
        (folder / f"{rel}.jsonl").write_text("".join(json.dumps({"sub_label": s, "answer_idx": i}) + "\n"
                                                     for s, i in r["instances"][:n]))
    (folder / "metadata_relations.json").write_text(json.dumps(meta))
    (root / "bear" / "relation_info.json").write_text(json.dumps({k: {"domains": v} for k, v in RELATIONS.items()}))
    return root


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_data_dir):
    torch.manual_seed(0)
    model = BabyHGRNForCausalLM(BabyHGRNConfig(vocab_size=1000, **SMALL["babyhgrn"][1])).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # spread the scores: no near-ties between statements
    return model, load_tokenizer(tiny_data_dir)


def reference(model, tokenizer, data_dir, templates=None):
    """The independent scorer: one forward per statement in float64, lm-pub-quiz's rules written out."""
    meta = json.loads((data_dir / "bear" / "BEAR" / "metadata_relations.json").read_text())
    rights, gaps = {}, []
    for rel, spec in meta.items():
        for line in (data_dir / "bear" / "BEAR" / f"{rel}.jsonl").read_text().splitlines():
            row = json.loads(line)
            for template in spec["templates"][:templates]:
                scores = []
                for answer in spec["answer_space_labels"]:
                    text = template.replace("[X]", row["sub_label"]).replace("[Y]", answer)
                    text = text[0].upper() + text[1:]
                    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
                    with torch.no_grad():
                        logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
                    scores.append(sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1)))
                best = max(range(len(scores)), key=lambda i: (scores[i], -i))
                gaps.append(sorted(scores)[-1] - sorted(scores)[-2])
                rights.setdefault(rel, []).append(best == row["answer_idx"])
    assert min(gaps) > 1e-3  # decisions not at the mercy of float error
    return rights


@pytest.mark.parametrize("task", ["bear", "bear_lite"])
def test_batched_scorer_equals_plain_loop_on_two_relations(model_and_tokenizer, bear_data, task):
    model, tok = model_and_tokenizer
    rights = reference(model, tok, bear_data, templates=1 if task == "bear_lite" else None)
    got = evaluate_bear(model, tok, task, batch_size=16, data_dir=bear_data, per_item=True)
    k = 1 if task == "bear_lite" else 3
    # per item, grouped by instance (its templates together): what the study's intervals resample
    assert got[f"{task}_correct"] == {r: [[int(y) for y in x[i:i + k]] for i in range(0, len(x), k)]
                                      for r, x in rights.items()}
    assert {r: len(x) for r, x in rights.items()} == ({"P30": 7, "P105": 5} if task == "bear_lite" else
                                                       {"P30": 21, "P105": 15})
    acc = {r: sum(x) / len(x) for r, x in rights.items()}
    assert got[f"{task}_relations"] == pytest.approx(acc)
    assert got[task] == pytest.approx(sum(map(sum, rights.values())) / sum(map(len, rights.values())))
    # lm-pub-quiz's domain averaging: relations weighted by items / number of their domains
    n = {r: len(x) / 2 for r, x in rights.items()}
    assert got[f"{task}_domains"] == pytest.approx(
        {"Arts": acc["P30"], "Scientific": acc["P105"],
         "Geographic": (n["P30"] * acc["P30"] + n["P105"] * acc["P105"]) / (n["P30"] + n["P105"])})
    limited = evaluate_bear(model, tok, task, limit=2, data_dir=bear_data)
    assert limited[f"{task}_relations"] == pytest.approx({r: sum(x[:2 * k]) / (2 * k) for r, x in rights.items()})


def test_embedded_bear():
    rel = read_bear()
    assert len(rel) == 60 and sum(len(r["instances"]) for r in rel.values()) == 7731
    assert all(len(r["templates"]) == 3 and r["domains"] for r in rel.values())
    assert max(len(r["answers"]) for r in rel.values()) == 60 and rel["P30"]["answers"][:2] == ["Africa", "Antarctica"]


def test_eval_cli_bear_beside_blimp(model_and_tokenizer, bear_data, tmp_path, capsys):
    """`babylm-ds eval --tasks blimp/...,bear`: OUT.json gains bear, bear_relations, bear_domains; the report and the
    card show BEAR beside BLiMP; the macro average stays BLiMP / supplement / EWoK's."""
    model, tok = model_and_tokenizer
    final = tmp_path / "run" / "final"
    export_hf(model, model.state_dict(), tok, str(final), CARD)
    (bear_data / "blimp_filtered").mkdir(exist_ok=True)
    rows = [{"sentence_good": "The cat sleeps.", "sentence_bad": "The cat sleep."}] * 3
    (bear_data / "blimp_filtered" / "agreement.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "zs"
    assert babylm_cli.main(["eval", "--model", str(final), "--tasks", "blimp,bear", "--data-dir", str(bear_data),
                            "--limit", "3", "--out", str(out), "--threads", "1"]) == 0
    res = json.loads((tmp_path / "zs.json").read_text())["run"]
    assert set(res["bear_relations"]) == {"P30", "P105"} and set(res["bear_domains"]) == {"Arts", "Geographic",
                                                                                           "Scientific"}
    assert res["macro"] == res["blimp"]["mean"] and 0 <= res["bear"] <= 1
    md = (tmp_path / "zs.md").read_text()
    assert f"| bear | {100 * res['bear']:.1f} |" in md and "| bear | P105 |" in md and "| bear | domain Arts |" in md
    assert md.index("| blimp |") < md.index("| macro |") < md.index("| bear |")
    readme = (final / "README.md").read_text()
    assert f"| bear | {100 * res['bear']:.1f} |" in readme and "| blimp |" in readme


@pytest.mark.parametrize("case", ["no metadata", "unknown task"])
def test_bad_bear_input_is_one_line_before_the_model(case, tmp_path, capsys):
    (tmp_path / "bear" / "BEAR").mkdir(parents=True)
    (tmp_path / "bear" / "BEAR" / "P30.jsonl").write_text('{"sub_label": "Kenya", "answer_idx": 0}\n')
    tasks = "bear_big" if case == "unknown task" else "bear"
    rc = babylm_cli.main(["eval", "--model", str(tmp_path / "no-model"), "--tasks", tasks, "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("babylm-ds eval: error: "), err
    expected = {"no metadata": f"{tmp_path}/bear/BEAR/metadata_relations.json not found",
                "unknown task": "unknown task(s) ['bear_big']"}[case]
    assert expected in err

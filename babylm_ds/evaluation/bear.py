"""The BEAR relational-knowledge probe (Wiland, Ploner, Akbik 2024), scored as lm-pub-quiz scores causal LMs.

Data: `bear/BEAR/metadata_relations.json` ({relation: templates, answer_space_labels, answer_space_ids}) and
`bear/BEAR/{relation}.jsonl` (instances: `sub_label`, `answer_idx`, ...), each file also as `.xz`, plus the
optional `bear/relation_info.json` ({relation: {"domains": [...]}}), under the eval data dir (embedded:
`data/eval/bear/`, a copy of lm-pub-quiz/BEAR).

lm-pub-quiz's choices (its `Templater`, `CLMInterface`, `Accuracy` metric and `DatasetResults.get_metrics`),
followed here: every answer of the relation's answer space fills the template's `[Y]` and the subject's label its
`[X]`, the first character is upper-cased; a statement is scored as the sum of the log-probs of all its tokens
after BOS ("sum" reduction, not conditional on the subject); an item (instance x template) is right when the
true answer's statement scores highest (`argmax`: of equal scores the first answer wins). A relation's
accuracy is its share of right items; the overall accuracy weights relations by their items (= the share of
all items right); a domain's accuracy weights its relations by items / number of the relation's domains.

Tasks: `bear` (every template), `bear_lite` (each relation's first template only, lm-pub-quiz's
`template_index=0`: a third of the statements). `limit`: the first N instances of each relation.
"""
import json
import os

from .data import read_text, resolve_dir
from .zeroshot import score_texts

TASKS = ("bear", "bear_lite")


def _read(path):
    """Text of `path`, else of `path`.xz; None when neither exists."""
    for candidate in (path, path + ".xz"):
        if os.path.isfile(candidate):
            return read_text(candidate)
    return None


def _json(text, where):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None


def bear_dir(data_dir=None):
    return os.path.join(resolve_dir(data_dir), "bear")


def read_bear(data_dir=None):
    """{relation: {"templates", "answers", "instances": [(subject, answer_idx)], "domains"}} in metadata order."""
    folder = os.path.join(bear_dir(data_dir), "BEAR")
    meta_path = os.path.join(folder, "metadata_relations.json")
    text = _read(meta_path)
    if text is None:
        raise ValueError(f"{meta_path} not found (nor .xz): a BEAR folder needs its metadata_relations.json "
                         "(templates and answer spaces); copy lm-pub-quiz/BEAR's BEAR/ folder whole")
    meta = _json(text, meta_path)
    info_text = _read(os.path.join(bear_dir(data_dir), "relation_info.json"))
    info = _json(info_text, os.path.join(bear_dir(data_dir), "relation_info.json")) if info_text else {}
    relations = {}
    for rel, spec in meta.items():
        path = os.path.join(folder, f"{rel}.jsonl")
        lines = _read(path)
        if lines is None:
            raise ValueError(f"{path} not found (nor .xz): {meta_path} lists relation {rel}")
        try:
            answers, templates = spec["answer_space_labels"], spec["templates"]
            rows = [json.loads(line) for line in lines.splitlines() if line.strip()]
            instances = [(r["sub_label"], r["answer_idx"]) for r in rows]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: relation {rel} lacks field {e} (metadata: templates, answer_space_labels; "
                             "instances: sub_label, answer_idx)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSONL ({e})") from None
        if not templates or any(type(i) is not int or not 0 <= i < len(answers) for _, i in instances):
            raise ValueError(f"{path}: relation {rel} needs templates and answer_idx within its "
                             f"{len(answers)} answers")
        relations[rel] = {"templates": templates, "answers": answers, "instances": instances,
                          "domains": info.get(rel, {}).get("domains", [])}
    return relations


def fill(template, subject, answer):
    """lm-pub-quiz's statement: `[X]` -> subject, `[Y]` -> answer, first character upper-cased."""
    text = template.replace("[X]", subject).replace("[Y]", answer)
    return text[:1].upper() + text[1:]


def items(relations, task="bear", limit=None):
    """[(relation, true answer index, [statement per answer])]: instance by instance, template by template."""
    if task not in TASKS:
        raise ValueError(f"unknown BEAR task {task!r}; choose from {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    out = []
    for rel, r in relations.items():
        templates = r["templates"][:1] if task == "bear_lite" else r["templates"]
        for subject, true in r["instances"][:limit]:
            out += [(rel, true, [fill(t, subject, a) for a in r["answers"]]) for t in templates]
    return out


def accuracies(relations, rights, prefix="bear"):
    """`{prefix, prefix_relations, prefix_domains}` from {relation: [right per item]} (lm-pub-quiz's averaging)."""
    acc = {rel: sum(r) / len(r) for rel, r in rights.items()}
    out = {prefix: sum(map(sum, rights.values())) / sum(map(len, rights.values())), f"{prefix}_relations": acc}
    weights = {}
    for rel, r in rights.items():
        for d in relations[rel]["domains"]:
            weights.setdefault(d, []).append((len(r) / len(relations[rel]["domains"]), acc[rel]))
    if weights:
        out[f"{prefix}_domains"] = {d: sum(w * a for w, a in ws) / sum(w for w, _ in ws)
                                    for d, ws in sorted(weights.items())}
    return out


def evaluate_bear(model, tokenizer, task="bear", limit=None, batch_size=64, data_dir=None, device=None,
                  progress=False, relations=None, per_item=False):
    """`accuracies` of `model` on BEAR (`task` bear or bear_lite), every statement scored once, in batches.
    `relations`: `read_bear(data_dir)`, when already read. `per_item`: also `{task}_correct`, {relation: [[0/1 per
    template] per instance]} (for intervals that resample instances)."""
    relations = relations or read_bear(data_dir)
    todo = items(relations, task, limit)
    keys = {}
    for _, _, statements in todo:
        for s in statements:
            keys.setdefault(s, len(keys))
    scores = score_texts(model, tokenizer, [("", s) for s in keys], batch_size, device, progress)
    rights = {}
    for rel, true, statements in todo:
        s = [scores[keys[x]] for x in statements]
        rights.setdefault(rel, []).append(s.index(max(s)) == true)
    out = accuracies(relations, rights, task)
    if per_item:
        n = {rel: 1 if task == "bear_lite" else len(relations[rel]["templates"]) for rel in rights}
        out[f"{task}_correct"] = {rel: [[int(x) for x in r[i:i + n[rel]]] for i in range(0, len(r), n[rel])]
                                  for rel, r in rights.items()}
    return out

"""(Super)GLUE fine-tuning tasks and data, as the BabyLM 2025 pipeline reads them (evaluation-pipeline-2025,
`evaluation_pipeline/finetune/dataset.py` and `eval_finetuning.sh`).

Layout: `glue_filtered/{task}.{train,valid}.jsonl` (or `.jsonl.xz`) under the eval data dir: the embedded
`data/eval/` holds rte and wsc; BabyLM's `evaluation_data/` (its `full_eval/`) holds all seven. One JSON object
a line with the task's text fields and an integer `label`. An input is the pair (A, B): A is the `a` fields
formatted by `template` (joined by spaces without one), B the `b` fields joined by spaces.

`python -m babylm_ds.evaluation.glue SUPERGLUE_DIR OUT_DIR` converts SuperGLUE's RTE and WSC (jiant's
`{RTE,WSC}/{train,val}.jsonl`) into that layout (the embedded files were made so).
"""
import json
import lzma
import os
import sys
from dataclasses import dataclass

from babylm_ds.utils.io import atomic_path

from .data import read_text, resolve_dir

SPLITS = ("train", "valid")


@dataclass(frozen=True)
class Task:
    a: tuple
    b: tuple
    template: str | None = None
    num_labels: int = 2
    batch_size: int = 32
    epochs: int = 10
    select_on: str = "accuracy"  # valid metric that picks the epoch kept

    def pair(self, row):
        a = [row[k] for k in self.a]
        return self.template.format(*a) if self.template else " ".join(a), " ".join(row[k] for k in self.b)


TASKS = {
    "boolq": Task(("question",), ("passage",), batch_size=16),
    "mnli": Task(("premise",), ("hypothesis",), num_labels=3),
    "mrpc": Task(("sentence1",), ("sentence2",), select_on="f1"),
    "multirc": Task(("question", "answer"), ("paragraph",), "Question: {} Answer: {}", batch_size=16),
    "qqp": Task(("question1",), ("question2",), select_on="f1"),
    "rte": Task(("sentence1",), ("sentence2",)),
    "wsc": Task(("span2_text", "span1_text"), ("text",), 'Does "{}" refer to "{}" in this passage?', epochs=30),
}


def parse_tasks(tasks):
    """Task names from a comma list (or a list); ValueError on an unknown one."""
    if tasks is None:
        raise ValueError(f"no fine-tuning task given; choose from {', '.join(TASKS)}")
    names = [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown fine-tuning task(s) {unknown or tasks!r}; choose from {', '.join(TASKS)}")
    return names


def check_settings(ft, name=str):
    """ValueError (one line) unless the fine-tuning settings `ft` (`config.Finetune`) can run; `name(key)` is
    how the message names a setting (a flag, a spec key)."""
    try:
        parse_tasks(ft.tasks)
    except ValueError as e:
        raise ValueError(f"{name('tasks')}: {e}") from None
    for key in ("max_train", "epochs", "batch_size", "valid_batch_size", "seq_len"):
        if (value := getattr(ft, key)) is not None and value < 1:
            raise ValueError(f"{name(key)} must be >= 1, got {value}")
    if not 0 < ft.lr <= 1:
        raise ValueError(f"{name('lr')} {ft.lr:g} is out of range: use 0 < lr <= 1")


def split_path(task, split, data_dir=None):
    """The file holding `task`'s `split`; ValueError naming the expected path when there is none."""
    path = os.path.join(resolve_dir(data_dir), "glue_filtered", f"{task}.{split}.jsonl")
    for candidate in (path, path + ".xz"):
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(f"{path} not found (nor {os.path.basename(path)}.xz): the embedded data holds rte and wsc; "
                     "for the other tasks point --data-dir at BabyLM's evaluation_data")


def read_split(task, split, data_dir=None):
    """(pairs [(A, B)], labels [int]) of `task`'s `split`; a malformed line, a missing field or a label outside
    the task's label set is a ValueError naming the file and line."""
    spec, path = TASKS[task], split_path(task, split, data_dir)
    pairs, labels = [], []
    try:
        lines = read_text(path).splitlines()
    except (lzma.LZMAError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = spec.pair(row)
            label = row["label"]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}:{n}: a {task} line needs the fields {[*spec.a, *spec.b, 'label']} "
                             f"as strings (and an integer label); problem with {e}") from None
        if type(label) is not int or not 0 <= label < spec.num_labels:
            raise ValueError(f"{path}:{n}: label {label!r} is outside {task}'s label set "
                             f"{list(range(spec.num_labels))}")
        pairs.append(pair)
        labels.append(label)
    if not pairs:
        raise ValueError(f"{path} holds no examples")
    return pairs, labels


def superglue_to_babylm(task, row):
    """A SuperGLUE (jiant) RTE / WSC row as a BabyLM `glue_filtered` row (RTE: entailment = 0, as in GLUE)."""
    if task == "rte":
        label = {"entailment": 0, "not_entailment": 1}[row["label"]]
        return {"sentence1": row["premise"], "sentence2": row["hypothesis"], "label": label, "idx": row["idx"]}
    if task == "wsc":
        return {"text": row["text"], **{k: row["target"][k] for k in ("span1_index", "span2_index", "span1_text",
                                                                      "span2_text")},
                "idx": row["idx"], "label": int(row["label"])}
    raise ValueError(f"no SuperGLUE conversion for {task!r}")


def convert_superglue(src, out_dir):
    """Write `out_dir/{rte,wsc}.{train,valid}.jsonl.xz` from SuperGLUE's `src/{RTE,WSC}/{train,val}.jsonl`."""
    paths = []
    for task in ("rte", "wsc"):
        for split, name in zip(SPLITS, ("train", "val"), strict=True):
            with open(os.path.join(src, task.upper(), f"{name}.jsonl"), encoding="utf-8") as f:
                rows = [superglue_to_babylm(task, json.loads(line)) for line in f if line.strip()]
            path = os.path.join(out_dir, f"{task}.{split}.jsonl.xz")
            with atomic_path(path) as tmp, lzma.open(tmp, "wt", encoding="utf-8", preset=9) as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m babylm_ds.evaluation.glue SUPERGLUE_DIR OUT_DIR")
    print("\n".join(convert_superglue(*sys.argv[1:])))

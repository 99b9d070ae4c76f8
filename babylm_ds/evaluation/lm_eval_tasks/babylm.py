"""lm-evaluation-harness loader of the babylm-ds tasks (`custom_dataset` of `_babylm_template_yaml`).

Items come from babylm_ds's own reader, so they are exactly what `babylm-ds eval` scores: the
embedded data/eval (or `--metadata '{"data_dir": DIR}'`), EWoK read from its password zip in memory.
BLiMP / supplement: empty context (lm-eval then conditions on the BOS token), the two sentences as
choices. EWoK: BOS text + Context1 as context (lm-eval adds no BOS to a non-empty context), " Target1"
and " Target2" as choices. With `target_delimiter: ""` lm-eval scores exactly these strings.
`bos` (metadata) is the tokenizer's BOS text, "<s>" for the tokenizers babylm-ds trains.
"""
import datasets

from babylm_ds.evaluation.data import load_tasks


def load(benchmark, paradigm, data_dir=None, bos="<s>", **_):
    items = load_tasks([f"{benchmark}/{paradigm}"], data_dir=data_dir)[benchmark][paradigm]
    if any(pa != pb for pa, _, pb, _ in items):
        raise ValueError(f"{benchmark}/{paradigm}: the two sides of a pair must share one context")
    docs = [{"context": bos + pa if pa else "", "choices": [ca, cb]} for pa, ca, pb, cb in items]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})

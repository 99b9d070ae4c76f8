"""Zero-shot benchmark items: BLiMP, BLiMP supplement and EWoK as pairs of (prefix, continuation).

Layout of a data dir (the embedded `data/eval/`, or BabyLM's `evaluation_data/full_eval/`):
`blimp_filtered/*.jsonl[.xz]`, `supplement_filtered/*.jsonl[.xz]`, and EWoK as
`ewok_filtered/*.jsonl` or a password zip `ewok_filtered.zip` read in memory (never extracted).
"""
import json
import lzma
import os
import zipfile

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data", "eval")
EWOK_PASSWORD = b"BabyLM2025"
BENCHMARKS = ("blimp", "supplement", "ewok")
_DIRS = {"blimp": ("blimp_filtered", "blimp_fast"), "supplement": ("supplement_filtered", "supplement_fast"),
         "ewok": ("ewok_filtered", "ewok_fast")}


def resolve_dir(data_dir=None):
    """The folder holding the benchmark subfolders (accepts BabyLM's `evaluation_data/` root too)."""
    data_dir = os.path.abspath(data_dir or DEFAULT_DIR)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"eval data dir {data_dir} does not exist (use --data-dir)")
    full = os.path.join(data_dir, "full_eval")
    return full if os.path.isdir(full) else data_dir


def read_text(path):
    """The text of `path` (UTF-8), decompressed when it ends in .xz."""
    with (lzma.open if path.endswith(".xz") else open)(path, "rt", encoding="utf-8") as f:
        return f.read()


def _parse(text, where):
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSONL ({e})") from None


def _read_jsonl_dir(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith((".jsonl", ".jsonl.xz")):
            out[name.removesuffix(".xz")[:-6]] = _parse(read_text(path), path)
    return out


def _read_zip(path):
    """{stem: rows} from every *.jsonl member of a (possibly password-protected) zip, in memory."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in sorted(z.namelist()):
                if member.endswith(".jsonl"):
                    text = z.read(member, pwd=EWOK_PASSWORD).decode("utf-8")
                    out[os.path.basename(member)[:-6]] = _parse(text, f"{path}:{member}")
    except (zipfile.BadZipFile, RuntimeError) as e:  # RuntimeError: wrong password
        raise ValueError(f"cannot read {path}: {e}") from None
    return out


def read_benchmark(bench, data_dir=None):
    """{paradigm: [raw rows]} for one benchmark, read from `data_dir` (default: embedded data)."""
    if bench not in _DIRS:
        raise ValueError(f"unknown benchmark {bench!r}; choose from {', '.join(BENCHMARKS)}")
    root = resolve_dir(data_dir)
    for name in _DIRS[bench]:
        folder, zpath = os.path.join(root, name), os.path.join(root, name + ".zip")
        if os.path.isdir(folder) and (rows := _read_jsonl_dir(folder)):
            return rows
        if os.path.isfile(zpath):
            return _read_zip(zpath)
    raise FileNotFoundError(f"no {bench} data in {root} "
                            f"(expected {_DIRS[bench][0]}/*.jsonl[.xz] or {_DIRS[bench][0]}.zip)")


def _items(bench, rows):
    """Items as (prefix_a, cont_a, prefix_b, cont_b): right when log p(cont_a | prefix_a) >= log p(cont_b | prefix_b).

    blimp / supplement: empty prefix (the sentence is scored after BOS only), newlines kept.
    ewok: Context1 + " " + Target1 vs Context1 + " " + Target2 (the BabyLM 2025 join: one space
    between context and target; only the target tokens are scored).
    ewok_swap: the context-swap variant, Target1 after Context1 vs Target1 after Context2.
    """
    if bench == "ewok":
        return [(r["Context1"], " " + r["Target1"], r["Context1"], " " + r["Target2"]) for r in rows]
    if bench == "ewok_swap":
        return [(r["Context1"], " " + r["Target1"], r["Context2"], " " + r["Target1"]) for r in rows]
    return [("", r["sentence_good"], "", r["sentence_bad"]) for r in rows]


def load_tasks(tasks=BENCHMARKS, limit=None, data_dir=None):
    """{bench: {paradigm: [(prefix_good, cont_good, prefix_bad, cont_bad), ...]}}.

    `tasks`: benchmark names ("blimp", "supplement", "ewok") or "bench/paradigm"; selecting "ewok"
    also yields "ewok_swap". `limit`: first N items per paradigm.
    """
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    wanted = {}
    for t in tasks:
        bench, _, paradigm = t.partition("/")
        if bench not in BENCHMARKS:
            raise ValueError(f"unknown task {t!r}; choose from {', '.join(BENCHMARKS)} or BENCH/PARADIGM")
        wanted.setdefault(bench, set()).add(paradigm or None)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    out = {}
    for bench, paradigms in wanted.items():
        raw = read_benchmark(bench, data_dir)
        if None not in paradigms:
            missing = paradigms - raw.keys()
            if missing:
                raise ValueError(f"unknown {bench} paradigm(s) {sorted(missing)}; have {sorted(raw)}")
            raw = {p: raw[p] for p in sorted(paradigms)}
        raw = {p: rows[:limit] for p, rows in raw.items()}
        for name in (bench, "ewok_swap") if bench == "ewok" else (bench,):
            try:
                out[name] = {p: _items(name, rows) for p, rows in raw.items()}
            except KeyError as e:
                raise ValueError(f"{bench} data in {resolve_dir(data_dir)}: an item has no field {e}") from None
    return out

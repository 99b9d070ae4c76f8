"""The configuration of every babylm-ds job as one typed tree: data, model, optimisation and schedule,
distillation, teacher cache, evaluation, run.

Every setting is one field below, its default and its comment written once (the comment is the flag's
`--help`). The rest is derived from the tree:
  - each command's flags: `build_parser(COMMAND)`, `--field-name` unless the field says otherwise;
  - the DeepSpeed JSON merge (`babylm_ds.training.config.build_ds_config`);
  - a study spec's sections and keys (`babylm_ds.study.spec`) and the argv a study or the demo passes to a
    launcher (`to_argv`);
  - OUT/config.yaml, written by every training run (`dump`) and shown by `--print-config` without running.
A new setting is one line here, then `cfg.SECTION.NAME` where it is used.
"""
import argparse
import copy
import dataclasses
import io
import sys
import tokenize
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line when `--field-name FIELD_TYPE` is not what it needs."""
    names: tuple = ()  # flag names (first: the one `to_argv` writes)
    nargs: object = None
    const: object = None
    choices: tuple | None = None
    metavar: str | None = None


def flag(*names, **kwargs):
    return Flag(names, **kwargs)


# Distillation recipes `--preset` fills in (flags still override). The teachers (trained HF dirs of the model
# presets named in each comment) come from --teachers or are baked into --teacher-cache.
PRESETS = {
    # BabyLlama (Timiryasov & Tastet 2023): Llama-360M + GPT2-705M ensemble -> Llama-58M, 6 epochs, lr 2.5e-4,
    # batch 32, 200 warmup steps, cosine, wd 0.1, alpha 0.5, T 2, KLDivLoss(batchmean).
    "babyllama-ensemble": {"model.name": "babyllama-58m", "distill.alpha": 0.5, "distill.temperature": 2.0,
                           "distill.kd_reduction": "batchmean", "optim.lr": 2.5e-4, "optim.micro_batch": 32,
                           "optim.warmup_steps": 200, "optim.schedule": "cosine", "optim.epochs": 6.0,
                           "optim.weight_decay": 0.1},
    "babyllama-ensemble-tiny": {"model.name": "llama-tiny", "distill.alpha": 0.5, "distill.temperature": 2.0,
                                "distill.kd_reduction": "batchmean", "optim.lr": 1e-3, "optim.micro_batch": 8,
                                "optim.warmup_steps": 10, "optim.schedule": "cosine", "optim.epochs": 1.0},
    # BabyHGRN: a trained BabyHGRN teacher distilled into a fresh student of the same size.
    "self-hgrn": {"model.name": "babyhgrn-360m", "distill.alpha": 0.5, "distill.temperature": 2.0,
                  "distill.kd_reduction": "token", "optim.lr": 3e-4, "optim.micro_batch": 32,
                  "optim.warmup_steps": 200, "optim.schedule": "cosine", "optim.epochs": 6.0},
    "self-hgrn-tiny": {"model.name": "babyhgrn-tiny", "distill.alpha": 0.5, "distill.temperature": 2.0,
                       "distill.kd_reduction": "token", "optim.lr": 1e-3, "optim.micro_batch": 8,
                       "optim.warmup_steps": 10, "optim.schedule": "cosine", "optim.epochs": 1.0},
}


@dataclass
class Data:
    """The prepared data dir a run reads, and how `babylm-ds prepare` (or a study) makes one."""
    dir: Annotated[str | None, flag("--data")] = None  # prepared data dir (babylm-ds prepare)
    corpus: str | None = None  # a .txt(.xz/.gz) file or a directory of them (default: the embedded corpus)
    word_budget: str = "10M"  # 10M | 100M | N words: a corpus with more is refused
    max_words: int | None = None  # truncate the corpus to about N words (deterministic; quick runs)
    vocab_size: int = 16000  # BPE vocabulary size
    seq_len: int = 128  # tokens per packed window
    dev_fraction: float = 0.02  # fraction of documents held out as dev
    seed: int = 0  # seed of the dev split
    num_proc: int = 2  # processes for tokenization
    shard_sequences: int = 65536  # max sequences per shard file (16 MiB at seq_len 128)


@dataclass
class Model:
    """What is trained: a preset of the zoo or a saved HF model dir, with config overrides; how model dirs are read."""
    name: Annotated[str | None, flag("--model")] = None  # preset (python -m babylm_ds.models.zoo) or an HF model dir
    config: Annotated[dict, flag("--model-config", nargs="*", metavar="KEY=VALUE")] = field(default_factory=dict)
    # model config overrides, e.g. hidden_size=256 num_hidden_layers=4 (not vocab_size: it comes from the data)
    no_verify: bool = False
    # load model folders (an HF --model dir, the teachers) without checking their manifest.json (e.g. a folder
    # babylm-ds did not export); by default a missing, truncated or edited file is refused before loading


@dataclass
class Optim:
    """AdamW, batch sizes, length, and the lr schedule (linear warmup, then cosine / linear decay or constant)."""
    lr: float = 3e-4  # peak learning rate, 0 < lr <= 1
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.1  # AdamW weight decay of matrices (biases and norms get none)
    micro_batch: int | None = None  # sequences per rank per micro-step (default: the DeepSpeed JSON's, else 8)
    grad_accum: int | None = None  # micro-steps per optimizer step (default: the DeepSpeed JSON's, else 1)
    clip: float | None = None  # gradient clipping, max global norm (default: the DeepSpeed JSON's, else 1.0)
    bf16: bool = False  # bf16 mixed precision (also on when the DeepSpeed JSON enables it); on a CPU ≈7.7x slower
    epochs: float = 1.0  # passes over the training set
    max_steps: int | None = None  # optimizer steps (overrides --epochs)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # lr after warmup
    warmup_steps: int | None = None  # linear lr warmup steps (default: a tenth of the run's steps)
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine, linear)


@dataclass
class Distill:
    """Knowledge distillation: loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)."""
    preset: Annotated[str | None, flag(choices=tuple(PRESETS))] = None  # fill defaults for a known recipe (PRESETS)
    teacher_cache: str | None = None  # offline targets: a cache dir from cache_logits.py
    teachers: Annotated[list[str] | None, flag(nargs="+")] = None
    # teacher HF dirs, e.g. a pretraining run's OUT/final (distill.py: online targets, run frozen in the process)
    teacher_weights: list[float] | None = None  # weights of the teachers' raw logits (default: equal, as BabyLlama)
    alpha: float = 0.5  # weight of CE; KD gets 1 - alpha
    temperature: float = 2.0  # KD temperature T
    kd_reduction: Literal["token", "batchmean"] = "token"
    # token: KL averaged per token; batchmean: summed over tokens / batch size (BabyLlama)
    tail_mode: Literal["uniform", "flat", "bucket"] = "uniform"  # offline: how the cached tail is tempered (losses.kd)
    beta: float = 0.0  # online: weight of hidden-state MSE (deep supervision)
    layer_map: str = "auto"
    # online: student:teacher hidden-state indices (0 = embeddings), e.g. 2:6,4:12; auto = middle and last layers


@dataclass
class Cache:
    """The offline teacher cache (launchers/cache_logits.py): top-k ids and log-probs + tail mass per token."""
    k: int = 64  # top-k ids kept per token
    shard_size: int = 256  # sequences per shard file
    batch_size: int = 16  # sequences per teacher forward
    logprob_dtype: Literal["float16", "float32"] = "float16"  # dtype of the cached log-probs
    tail_dtype: Literal["float16", "float32"] = "float32"  # dtype of the cached log tail mass
    teacher_dtype: Literal["float32", "bfloat16"] = "float32"  # dtype the teachers run in
    kl_sample: int = 16  # sequences for the KL(full || cached) report
    kl_temperature: float = 2.0  # also report the KL error at this temperature


@dataclass
class Evaluation:
    """Dev loss during training, zero-shot benchmarks at epoch ends, and the final evaluation of a study."""
    eval_every: int = 0  # dev loss every N steps (0: at epoch ends and at the end only)
    dev_max_seqs: int | None = None  # cap on dev sequences per evaluation (default: all)
    epoch_tasks: Annotated[str | None, flag("--eval-zeroshot")] = None
    # zero-shot benchmarks at each epoch end, comma list, e.g. blimp,supplement,ewok (default: none, dev loss only)
    epoch_limit: Annotated[int | None, flag("--eval-limit")] = 100  # items per paradigm at epoch ends (none: all)
    tasks: str = "blimp,supplement,ewok"
    # benchmarks of the final evaluation (study, demo): blimp, supplement, ewok (macro: their mean), bear, bear_lite
    final_limit: int | None = None  # items per paradigm in the final evaluation (default: every item)
    bear_limit: int | None = None  # instances per BEAR relation in the final evaluation (default: final_limit)
    bootstrap: int = 1000  # bootstrap draws of the study's 95% intervals


@dataclass
class Finetune:
    """(Super)GLUE fine-tuning of a final model (`babylm-ds finetune`, a study's `evaluation.finetune`),
    as BabyLM 2025's."""
    tasks: str | None = "rte,wsc"  # comma list of boolq, mnli, mrpc, multirc, qqp, rte, wsc
    # (a study: none, no fine-tuning)
    data_dir: str | None = None
    # eval data with glue_filtered/ (default: the embedded data/eval, rte and wsc; BabyLM's evaluation_data for all)
    max_train: int | None = None  # first N training examples per task (default: all)
    epochs: int | None = None  # epochs per task (default: the pipeline's, 10; wsc 30)
    lr: float = 3e-5  # AdamW learning rate, 0 < lr <= 1
    batch_size: int | None = None  # training batch (default: the pipeline's, 32; boolq and multirc 16)
    valid_batch_size: int = 64  # batch of the valid passes
    seq_len: int = 512  # tokens per input; longer ones are truncated
    seed: int = 42  # seed of the head's init and the batch order


@dataclass
class Run:
    """Where the output goes, resumption, seeds, how jobs are launched."""
    out: str | None = None  # output dir (a run: checkpoints/, tb/, metrics.jsonl, config.yaml, final/)
    resume: Annotated[str | None, flag(nargs="?", const="auto")] = None
    # continue from a checkpoint dir (the flag alone: OUT/checkpoints, tag from its `latest`)
    force: bool = False  # replace finished work in --out (a run, a cache, a data dir); without it that is refused
    seed: int = 0  # seed of the init, the data order and dropout
    ds_config: Annotated[str | None, flag("--ds_config", "--ds-config")] = None
    # DeepSpeed JSON config (default: ZeRO-1, babylm_ds.training.config.DEFAULT_CONFIG); the flags above fill it in
    save_every: int = 0  # checkpoint every N steps (0: at the end only)
    log_every: int = 10  # TensorBoard / progress-bar update interval (steps)
    num_workers: int = 0  # DataLoader workers
    dist_timeout: float = 1800.0
    # process-group timeout (s); in training also the seconds without progress (a micro-step, dev batch,
    # checkpoint) after which a rank stuck with a dead or stalled peer exits with an error
    local_rank: Annotated[int, flag("--local_rank", "--local-rank")] = -1  # set by the deepspeed launcher
    launcher: Literal["deepspeed", "torchrun", "python"] = "deepspeed"
    # how a study starts its jobs (python: one process, world size 1)
    world_size: int = 1  # processes per job a study starts (a job per GPU group when there are several)
    threads: int | None = None  # CPU threads per rank of a study's jobs (default: cores / world size)


@dataclass
class Config:
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)
    distill: Distill = field(default_factory=Distill)
    cache: Cache = field(default_factory=Cache)
    evaluation: Evaluation = field(default_factory=Evaluation)
    finetune: Finetune = field(default_factory=Finetune)
    run: Run = field(default_factory=Run)


# --- the fields --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    path: str  # "section.name"
    type: object  # the annotation without Annotated
    default: object
    flag: Flag
    help: str

    @property
    def flags(self):
        return self.flag.names or ("--" + self.path.split(".")[1].replace("_", "-"),)


def _comments(cls):
    """{field name: its comment}: the comment on the field's line plus the comment-only lines right below it."""
    import inspect

    out, current = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4:
            current = tok.string if tok.line[4:].startswith(tok.string + ":") else None
        elif tok.type == tokenize.COMMENT and current:
            out[current] = (out.get(current, "") + " " + tok.string.lstrip("#").strip()).strip()
    return out


def _fields():
    out = {}
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints, comments = typing.get_type_hints(cls, include_extras=True), _comments(cls)
        for f in dataclasses.fields(cls):
            hint, meta = hints[f.name], Flag()
            if typing.get_origin(hint) is Annotated:
                hint, meta = hint.__origin__, hint.__metadata__[0]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out[f"{section.name}.{f.name}"] = Field(f"{section.name}.{f.name}", hint, default, meta,
                                                   comments.get(f.name, ""))
    return out


FIELDS = _fields()  # {"section.name": Field}, in the tree's order


def get(cfg, path):
    section, name = path.split(".")
    return getattr(getattr(cfg, section), name)


def updated(cfg, values):
    """A copy of `cfg` with `values` ({"section.name": value}) set (lists of tuple fields as tuples); unknown
    paths are a ValueError."""
    cfg = copy.deepcopy(cfg)
    for path, value in values.items():
        if path not in FIELDS:
            raise ValueError(f"unknown setting {path!r}")
        if isinstance(FIELDS[path].default, tuple) and isinstance(value, list):
            value = tuple(value)
        section, name = path.split(".")
        setattr(getattr(cfg, section), name, copy.deepcopy(value))
    return cfg


def check_value(path, value):
    """ValueError (one line, starting "must") unless `value` fits the type of field `path`."""
    tp = FIELDS[path].type
    if value is None:
        if not _optional(tp):
            raise ValueError("must not be null")
        return
    base, choices = _scalar(tp)
    container = typing.get_origin(typing.get_args(tp)[0] if _optional(tp) else tp) or tp
    items = value if container in (list, tuple) else [value]
    if container in (list, tuple) and not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list, got {value!r}")
    if container is dict:
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping of KEY: VALUE, got {value!r}")
        return
    for item in items:
        ok = (isinstance(item, bool) if base is bool else
              isinstance(item, (int, float)) and not isinstance(item, bool) if base is float else
              isinstance(item, int) and not isinstance(item, bool) if base is int else isinstance(item, base))
        if not ok or choices and item not in choices:
            kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
            want = f"one of {', '.join(choices)}" if choices else kinds[base]
            raise ValueError(f"must be {want}, got {item!r}")


def to_dict(cfg):
    """{section: {name: value}}, tuples as lists (YAML / JSON ready)."""
    return {s: {k: list(v) if isinstance(v, tuple) else v for k, v in vars(getattr(cfg, s)).items()}
            for s in (f.name for f in dataclasses.fields(Config))}


def from_dict(d):
    """The Config of a `to_dict` / config.yaml mapping (missing keys keep their defaults)."""
    return updated(Config(), {f"{s}.{k}": v for s, entries in (d or {}).items() for k, v in (entries or {}).items()})


def dump(cfg, command=None):
    """YAML text of `cfg` (only the fields of `command`, a key of COMMANDS, if given) in the tree's order."""
    import yaml

    d = to_dict(cfg)
    if command:
        keep = COMMANDS[command][0]
        d = {s: {k: v for k, v in entries.items() if f"{s}.{k}" in keep} for s, entries in d.items()}
        d = {s: entries for s, entries in d.items() if entries}
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=120)


def parse_overrides(pairs):
    """`key=value` model-config overrides; values parsed as int, float, bool or kept as strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--model-config expects key=value, got {pair!r}")
        for cast in (int, float, {"true": True, "false": False}.__getitem__):
            try:
                value = cast(value)
                break
            except (ValueError, KeyError):
                pass
        out[key] = value
    return out


# --- commands ----------------------------------------------------------------------------------------------------
def _select(*items):
    """Paths of `items`: "section" (every field of it), "section.name", or "section.name=--flag" (a rename)."""
    out = {}
    for item in items:
        path, _, rename = item.partition("=")
        for p in [p for p in FIELDS if p.startswith(path + ".")] if "." not in path else [path]:
            out[p] = (rename,) if rename else None
    return out


_TRAIN = ("data.dir", "model", "optim", "evaluation.eval_every", "evaluation.dev_max_seqs", "evaluation.epoch_tasks",
          "evaluation.epoch_limit", "run.out", "run.resume", "run.force", "run.seed", "run.ds_config", "run.save_every",
          "run.log_every", "run.num_workers", "run.dist_timeout", "run.local_rank")
# {command: ({path: flag names or None for the field's own}, required paths)}
COMMANDS = {
    "prepare": (_select("data.dir=--out", "data.corpus", "data.word_budget", "data.max_words", "data.seq_len",
                        "data.vocab_size", "data.dev_fraction", "data.seed", "data.num_proc", "data.shard_sequences",
                        "run.force"), ("data.dir",)),
    "pretrain": (_select(*_TRAIN), ("data.dir", "model.name", "run.out")),
    "distill": (_select(*_TRAIN, "distill"), ("data.dir", "run.out")),
    "cache_logits": (_select("data.dir", "distill.teachers", "distill.teacher_weights", "model.no_verify", "run.out",
                             "run.force", "cache",
                             "run.dist_timeout", "run.local_rank"), ("data.dir", "distill.teachers", "run.out")),
    "study": (_select("run.out", "run.threads", "run.force"), ()),
    "finetune": (_select("finetune"), ()),  # + the tool's own options (babylm_ds.evaluation.finetune)
}
ALIASES = {"distill": {"model.name": ("--student",)}}  # extra flag names of a field in one command
NONE = "none"  # what a command line writes for None where the default is not None (e.g. --eval-limit none)


def _scalar(tp):
    """(argparse type, choices) of an annotation without None; `none` parses to None when None is allowed."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return str, tuple(typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        return typing.get_args(tp)[0], None
    return tp, None


def _optional(tp):
    return type(None) in typing.get_args(tp)


def add_field(parser, f, names=None, **kwargs):
    """Add field `f` to an argparse parser (or group) as a flag with dest `f.path`."""
    tp, choices = _scalar(f.type)
    names = list(names or f.flags)
    help_ = f.help.replace("%", "%%")
    if tp is bool:
        return parser.add_argument(*names, **{"dest": f.path, "action": "store_true", "default": f.default,
                                              "help": help_, **kwargs})
    conv = tp
    if _optional(f.type):
        def conv(text, tp=tp):
            return None if text == NONE else tp(text)
        conv.__name__ = tp.__name__
    nargs = f.flag.nargs
    if nargs is None and typing.get_origin(typing.get_args(f.type)[0] if _optional(f.type) else f.type) is tuple:
        nargs = len(typing.get_args(f.type))
    elif nargs is None and list in (typing.get_origin(a) for a in (f.type, *typing.get_args(f.type))):
        nargs = "+"
    if isinstance(f.default, dict):
        conv = str
    kw = dict(dest=f.path, type=conv, default=f.default, help=help_,
              metavar=f.flag.metavar or (None if choices or f.flag.choices else f.path.split(".")[1].upper()))
    if nargs is not None:
        kw["nargs"] = nargs
    if f.flag.const is not None:
        kw["const"] = f.flag.const
    if f.flag.choices or choices:
        kw["choices"] = f.flag.choices or choices
    if "default" not in kwargs and f.default is not None and f.default != {} and not isinstance(f.default, bool):
        kw["help"] += f" (default {f.default if not isinstance(f.default, tuple) else ' '.join(map(str, f.default))})"
    return parser.add_argument(*names, **{**kw, **kwargs})


def build_parser(command, description=None, **kwargs):
    """The argparse parser of `command` (a key of COMMANDS): one flag per field, `--print-config`."""
    fields, required = COMMANDS[command]
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    groups = {}
    for path, names in fields.items():
        section = path.split(".")[0]
        if section not in groups:
            cls = dict((f.name, f.default_factory) for f in dataclasses.fields(Config))[section]
            groups[section] = p.add_argument_group(section, " ".join((cls.__doc__ or "").split()))  # one paragraph
        names = [*(names or FIELDS[path].flags), *ALIASES.get(command, {}).get(path, ())]
        add_field(groups[section], FIELDS[path], names, required=path in required)
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration (YAML) and exit")
    return p


def namespace_values(ns):
    """{path: value} of the tree's fields in an argparse namespace (model.config lists parsed)."""
    values = {k: v for k, v in vars(ns).items() if k in FIELDS}
    if isinstance(values.get("model.config"), list):
        values["model.config"] = parse_overrides(values["model.config"])
    return values


def parse(command, argv=None, description=None, prog=None):
    """The Config of `command`'s command line. `--preset` (distill) fills defaults that flags override;
    `--print-config` prints the resolved configuration and exits."""
    parser = build_parser(command, description, prog=prog)
    if "distill.preset" in COMMANDS[command][0]:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--preset", choices=tuple(PRESETS), default=None)
        preset = pre.parse_known_args(argv)[0].preset
        if preset:
            parser.set_defaults(**PRESETS[preset])
    ns = parser.parse_args(argv)
    try:
        cfg = updated(Config(), namespace_values(ns))
    except ValueError as e:
        parser.error(str(e))
    if ns.print_config:
        from babylm_ds.training.config import resolve

        sys.stdout.write(dump(resolve(cfg), command))
        raise SystemExit(0)
    return cfg


def to_argv(cfg, command):
    """The command line of `command` that parses back to `cfg` (fields at their default are left out)."""
    argv = []
    for path, names in COMMANDS[command][0].items():
        f, value = FIELDS[path], get(cfg, path)
        if value == f.default:
            continue
        name = (names or f.flags)[0]
        if isinstance(value, bool):
            if not value:
                raise ValueError(f"{path}: a flag cannot switch off {name}")
            argv.append(name)
        elif value is None:
            argv += [name, NONE]
        elif isinstance(value, dict):
            argv += [name, *[f"{k}={v}" for k, v in value.items()]]
        elif isinstance(value, (list, tuple)):
            argv += [name, *map(str, value)]
        else:
            argv += [name, str(value)]
    return argv

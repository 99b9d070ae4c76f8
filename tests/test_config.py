"""The configuration tree (babylm_ds/config.py): every launcher flag, study key and pipeline option maps to one
field of it, each setting is defined there once (with its comment), and what the study and the demo derive
from it (command lines, a spec's sections) parses back to the same configuration."""
import os
import re

import pytest
import yaml

from babylm_ds.config import COMMANDS, FIELDS, NONE, Config, build_parser, dump, from_dict, parse, to_argv, updated
from babylm_ds.study import demo
from babylm_ds.study.spec import SECTIONS, STRUCTURE, load_spec
from launch import ROOT

CONTROL = {"help", "print_config"}  # flags that are not settings: --help, --print-config


def _settings(parser):
    """[(option strings, dest)] of a parser's actions that are settings."""
    return [(a.option_strings, a.dest) for a in parser._actions if a.dest not in CONTROL]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_of_a_command_is_one_field(command):
    seen = {}
    for flags, dest in _settings(build_parser(command)):
        assert dest in FIELDS, (command, flags, dest)
        assert dest not in seen, f"{command}: {flags} and {seen.get(dest)} both set {dest}"
        seen[dest] = flags
    names = [f for flags, _ in _settings(build_parser(command)) for f in flags]
    assert len(names) == len(set(names))


def test_every_field_has_its_comment_and_a_default():
    for path, f in FIELDS.items():
        assert len(f.help) > 8, f"{path}: write the comment beside its default in babylm_ds/config.py"
    assert FIELDS["optim.warmup_steps"].help.startswith("linear lr warmup steps")
    assert FIELDS["run.dist_timeout"].help.endswith("exits with an error")  # a comment continued on its own lines


def test_every_study_key_maps_to_one_field():
    for section, keys in SECTIONS.items():
        for key, path in keys.items():
            assert path in FIELDS and path.endswith("." + key), (section, key, path)
    for key, target in STRUCTURE.items():
        assert target.split(" ")[0] in FIELDS or target.startswith(("the training section", "the finetune section",
                                                                     "the final models")), (key, target)
    # every key of the committed specs is one of them
    for name in sorted(os.listdir(ROOT / "studies")):
        raw = yaml.safe_load((ROOT / "studies" / name).read_text())
        for section in ("data", "training", "evaluation"):
            assert set(raw.get(section) or {}) - {"finetune"} <= set(SECTIONS[section]), (name, section)
        finetune = (raw.get("evaluation") or {}).get("finetune") or {}
        assert set(finetune) <= set(SECTIONS["finetune"]) | {"models"}, name
        for arch in raw["architectures"].values():
            assert set(arch) <= {k.split(".")[2] for k in STRUCTURE if k.startswith("architectures.")}
            assert set(arch.get("training") or {}) <= set(SECTIONS["training"])
        for student in (raw.get("students") or {}).values():
            assert set(student) <= set(SECTIONS["students"]) | {"arch", "teachers"}, name


def test_every_pipeline_option_maps_to_one_field():
    parser = demo.build_parser()
    for flags, dest in _settings(parser):
        if dest in ("stages", "dry_run"):  # which stages run, a plan: not settings of a run
            continue
        assert dest in demo.FLAGS.values() and flags == [k for k, v in demo.FLAGS.items() if v == dest], flags
        scope, _, path = dest.rpartition(":")
        assert path in FIELDS and scope in ("", *demo.SCOPES), dest


def test_flags_of_settings_are_defined_only_in_the_tree():
    """No module adds an argparse flag for a setting of the tree by hand (the evaluation and generation tools,
    which take a model dir and their own options, are not training settings; `babylm-ds finetune` takes its
    settings from the tree and adds only the model, the outputs and the threads)."""
    flags = {f for field in FIELDS.values() for f in field.flags}
    allowed = {"babylm_ds/config.py", "babylm_ds/evaluation/cli.py", "babylm_ds/evaluation/generate.py",
               "babylm_ds/evaluation/harness.py",
               "babylm_ds/models/zoo.py"}
    tool_options = {"babylm_ds/evaluation/finetune.py": {"--model", "--out", "--threads"}}
    found = []
    for folder in ("babylm_ds", "launchers"):
        for dirpath, _, files in os.walk(ROOT / folder):
            for name in files:
                path = os.path.relpath(os.path.join(dirpath, name), ROOT)
                if name.endswith(".py") and path not in allowed:
                    text = open(os.path.join(dirpath, name)).read()
                    found += [(path, m) for m in re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", text)
                              if m in flags and m not in tool_options.get(path, ())]
    assert not found, f"flags defined outside babylm_ds/config.py: {found}"


@pytest.mark.parametrize("command", ["pretrain", "distill", "cache_logits", "prepare"])
def test_to_argv_parses_back_to_the_same_config(command):
    paths = COMMANDS[command][0]
    values = {"data.dir": "D", "run.out": "O", "model.name": "llama-tiny", "model.config": {"hidden_size": 32},
              "optim.lr": 0.002, "optim.betas": (0.8, 0.9), "optim.bf16": True, "optim.max_steps": 7,
              "evaluation.epoch_limit": None, "evaluation.epoch_tasks": "blimp", "distill.teachers": ["a", "b"],
              "distill.teacher_weights": [0.25, 0.75], "distill.kd_reduction": "batchmean", "cache.k": 8,
              "run.force": True, "data.vocab_size": 500, "run.ds_config": "ds_configs/zero2.json"}
    cfg = updated(Config(), {p: v for p, v in values.items() if p in paths})
    argv = to_argv(cfg, command)
    assert parse(command, argv) == cfg, argv
    assert (NONE in argv) == ("evaluation.epoch_limit" in paths)


def test_print_config_and_config_yaml(capsys, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": 12, "gradient_accumulation_steps": 3}')
    with pytest.raises(SystemExit) as e:
        parse("pretrain", ["--model", "m", "--data", "d", "--out", "o", "--ds_config", str(ds), "--print-config"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["micro_batch"] == 12 and printed["optim"]["grad_accum"] == 3  # from the JSON
    assert printed["optim"]["clip"] == 1.0 and "distill" not in printed and "cache" not in printed
    cfg = parse("distill", ["--preset", "self-hgrn-tiny", "--data", "d", "--out", "o", "--teacher-cache", "c"])
    assert from_dict(yaml.safe_load(dump(cfg))) == cfg


def test_demo_flags_set_the_demo_spec():
    base = demo.demo_spec({})
    assert base == load_spec(demo.DEMO_SPEC)
    values, phases, _ = demo.parse_args(["--teachers", "llama-tiny", "gpt2-tiny", "--steps", "3", "--lr", "0.01",
                                         "--full-eval", "--eval-limit", "4", "--k", "8", "--seed", "2",
                                         "--stages", "prepare,cache"])
    assert phases == ["prepare", "distill"]
    spec = demo.demo_spec(values)
    archs = spec["architectures"]
    assert list(archs) == ["teacher-llama-tiny", "teacher-gpt2-tiny", "student"]
    assert [a["training"]["max_steps"] for a in archs.values()] == [6, 6, 3]  # teachers: twice the students'
    assert all(a["lrs"] == [0.01] for a in archs.values()) and spec["seeds"] == [2]
    assert spec["students"]["student-kd"]["teachers"] == ["teacher-llama-tiny", "teacher-gpt2-tiny"]
    assert spec["students"]["student-kd"]["k"] == 8 and spec["evaluation"]["final_limit"] is None
    # BEAR and fine-tuning: on in the demo (fine-tuning its students only), switched by flags
    ft = base["evaluation"]["finetune"]
    assert "bear_lite" in base["evaluation"]["tasks"].split(",") and base["evaluation"]["bear_limit"] >= 1
    assert ft["tasks"] == "rte,wsc" and ft["models"] == ["student", "student-kd"] and ft["max_train"] >= 1
    values = demo.parse_args(["--finetune-tasks", "none", "--bear-limit", "2", "--eval-tasks", "blimp"])[0]
    spec = demo.demo_spec(values)
    assert spec["evaluation"]["finetune"] is None and spec["evaluation"]["bear_limit"] == 2
    spec = demo.demo_spec(demo.parse_args(["--finetune-tasks", "wsc"])[0])
    assert spec["evaluation"]["finetune"] == {**ft, "tasks": "wsc"}

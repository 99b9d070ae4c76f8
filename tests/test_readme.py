"""The README's commands stay true: every command in it (code blocks and inline code) names a make target,
subcommand, launcher, benchmark or module that exists, only flags its parser has, repository paths that
exist, and outputs of `make demo` that the demo writes."""
import contextlib
import functools
import importlib
import io
import re
import runpy
import shlex

import pytest

from babylm_ds.config import build_parser
from babylm_ds.study import demo
from babylm_ds.study.spec import student_runs, sweep_runs
from launch import ROOT

README = (ROOT / "README.md").read_text()
PROGRAMS = ("make", "babylm-ds", "python", "deepspeed", "torchrun", "lm_eval", "bash")
REPO_DIRS = ("launchers", "benchmarks", "studies", "ds_configs", "scripts", "babylm_ds", "csrc", "tests",
             "data/corpus", "data/eval")
# each launcher's parser; test_launchers_parse_their_command checks the launcher uses it
LAUNCHERS = {"pretrain.py": "pretrain", "distill.py": "distill", "cache_logits.py": "cache_logits"}


def commands():
    """Every command of the README: the lines of bash blocks (continuations joined, comments cut) and the
    inline code that starts with a program."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                out.append(line)
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        words = span.split()
        if words and (words[0] in PROGRAMS or re.match(r"[A-Z_]+=", words[0])) and len(words) > 1:
            out.append(span)
    return out


def _tokens(command):
    words = shlex.split(re.sub(r"\$\([^)]*\)", "", command))
    while words and re.match(r"[A-Z_]+=", words[0]):  # VAR=value prefixes
        words = words[1:]
    return words


def _help(fn, *args):
    """stdout of fn(*args), a parser or main that exits after printing --help."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        fn(*args)
    return out.getvalue()


def _script_help(script):
    name = script.split("/", 1)[1]
    if script.startswith("launchers/"):
        if name in LAUNCHERS:
            return build_parser(LAUNCHERS[name]).format_help()
        if name == "pipeline.py":
            return demo.build_parser().format_help()
        if name == "evaluate.py":
            from babylm_ds.evaluation.cli import build_parser as eval_parser
            return eval_parser().format_help()
    if script.startswith("benchmarks/"):  # a benchmark's own code, run as a module (it is not a package)
        return _help(runpy.run_path(str(ROOT / script), run_name="readme_check")["main"], ["--help"])
    return None


@functools.cache
def _pipeline_outputs():
    """{out dir: what it holds} of every demo run the README shows (`make demo` and launchers/pipeline.py)."""
    runs = [c for c in commands() if c.startswith("python launchers/pipeline.py")]
    make_demo = re.search(r"^demo:.*\n\t\S+ launchers/pipeline\.py (.*)$", (ROOT / "Makefile").read_text(), re.M)
    out = {}
    for argv in [shlex.split(make_demo.group(1))] + [shlex.split(c)[2:] for c in runs]:
        values = demo.parse_args(argv)[0]
        spec = demo.demo_spec(values)
        best = {a: x["lrs"][0] for a, x in spec["architectures"].items()}
        students = student_runs(spec, best)
        out[values["run.out"]] = {"data", "logs", "stages", "eval", "study.md", "study.json", "study.png",
                                  "spec.json", *(f"runs/{r.name}" for r in sweep_runs(spec) + students),
                                  *(f"cache/{r.name}" for r in students)}
    return out


def _check_path(word, problems, command):
    if word.startswith("outputs/"):
        top = "/".join(word.split("/")[:2])
        rest = word[len(top) + 1:]
        held = _pipeline_outputs().get(top)
        if held is None:
            problems.append(f"{command!r}: no command in the README writes {top}")
        elif rest and not any(rest == p or rest.startswith(p + "/") for p in held):
            problems.append(f"{command!r}: the demo run into {top} writes no {word}")
    elif word.startswith(REPO_DIRS) and not re.search(r"[A-Z]{2,}", word) and not (ROOT / word).exists():
        problems.append(f"{command!r}: no such path {word}")


def _check(command):
    problems, words = [], _tokens(command)
    if not words:  # only VAR=value settings
        return []
    prog, rest = words[0], words[1:]
    helptext = None
    if prog in (".", "export"):
        return []
    if prog == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        return [f"{command!r}: no make target {t}" for t in rest if t not in targets]
    if prog == "babylm-ds":
        from babylm_ds.cli import COMMANDS, main
        if rest[0] not in COMMANDS:
            return [f"{command!r}: no subcommand {rest[0]}"]
        helptext, rest = _help(main, [rest[0], "--help"]), rest[1:]
        if command.startswith("babylm-ds cache ") and rest[0] not in helptext:
            problems.append(f"{command!r}: babylm-ds cache has no {rest[0]}")
    elif prog == "python" and rest[0] == "-m":
        helptext, rest = _help(importlib.import_module(rest[1]).main, ["--help"]), rest[2:]
    elif prog in ("python", "deepspeed", "torchrun", "bash"):
        scripts = [i for i, w in enumerate(rest) if w.endswith((".py", ".sh"))]
        if not scripts:
            return [f"{command!r}: no script"]
        script, rest = rest[scripts[0]], rest[scripts[0] + 1:]
        if not (ROOT / script).is_file():
            return [f"{command!r}: no such script {script}"]
        helptext = _script_help(script)
    for word in rest:
        if word.startswith("--") and helptext is not None:
            flag = word.split("=")[0]
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helptext):
                problems.append(f"{command!r}: {flag} is not a flag of it")
        elif not word.startswith("-"):
            for part in word.split(","):
                _check_path(part.split("=")[-1], problems, command)
    return problems


def test_readme_has_the_commands_we_think():
    found = commands()
    assert "make demo" in found and any(c.startswith("deepspeed --num_gpus 4 launchers/distill.py") for c in found)
    assert any(c.startswith("python benchmarks/distill_throughput.py") for c in found)
    assert len(found) > 30


def test_every_readme_command_names_what_exists():
    problems = [p for command in commands() for p in _check(command)]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_wrong_command():
    assert _check("python launchers/pretrain.py --model m --no-such-flag 1")
    assert _check("babylm-ds study studies/nope.yaml")
    assert _check("python benchmarks/distill_throughput.py --teachers outputs/demo/runs/teacher-llama-tiny/final")
    assert _check("make nothing")
    assert not _check("python launchers/pipeline.py --out runs/x --steps 3 --full-eval")


def test_launchers_parse_their_command():
    for script, command in LAUNCHERS.items():
        assert f'parse("{command}"' in (ROOT / "launchers" / script).read_text(), script
    assert "demo.parse_args" in (ROOT / "launchers" / "pipeline.py").read_text()
    assert "from babylm_ds.evaluation.cli import main" in (ROOT / "launchers" / "evaluate.py").read_text()

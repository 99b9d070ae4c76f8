"""The GPU window's preparation (issue 17): the carried wheels and their offline check, the emulated GPU
package set, the sizing of the learning run, and both GPU commands end to end on the CPU (--tiny)."""
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from babylm_ds.study import load_spec, sizing
from launch import HANG_S, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_wheels  # noqa: E402

WHL = ROOT / ".whl"
GPU_CHECK_S, GPU_LEARN_S = 365, 390  # both commands (run with 420 s and 450 s) and one machine start: 15 minutes


def fake_wheel(folder, name, version, tag="py3-none-any", metadata=None):
    """A wheel file holding only dist-info/METADATA (this environment's, unless given)."""
    stem = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{stem}-{tag}.whl", "w") as z:
        z.writestr(f"{stem}.dist-info/METADATA", metadata or md.distribution(name).read_text("METADATA"))


def test_wheel_check_finds_what_the_gpu_run_would_miss(tmp_path):
    plan = gpu_wheels.plan()
    names = {n for n, _ in plan}
    assert {"deepspeed", "datasets", "flash-linear-attention", "fla-core", "pydantic", "pydantic-core",
            "hjson", "multiprocess", "dill"} <= names
    assert not names & {"torch", "transformers", "triton", "numpy", "pyarrow"}  # on the GPU machine already
    for name, version in plan:
        fake_wheel(tmp_path, name, version)
    assert gpu_wheels.check(tmp_path) == []
    (tmp_path / f"hjson-{dict(plan)['hjson']}-py3-none-any.whl").unlink()
    fake_wheel(tmp_path, "dill", "0.3.0")
    fake_wheel(tmp_path, "pydantic-core", "9.9", tag="cp311-cp311-manylinux2014_x86_64")
    meta = md.distribution("datasets").read_text("METADATA").replace("Requires-Dist: xxhash",
                                                                      "Requires-Dist: nosuchpkg>=1")
    (tmp_path / f"datasets-{dict(plan)['datasets']}-py3-none-any.whl").unlink()
    fake_wheel(tmp_path, "datasets", dict(plan)["datasets"], metadata=meta)
    problems = "\n".join(gpu_wheels.check(tmp_path))
    assert f"hjson=={dict(plan)['hjson']} is missing" in problems
    assert "a second version of dill" in problems
    assert "does not install on CPython 3.12" in problems
    assert "needs nosuchpkg>=1, which neither the GPU machine nor" in problems


def test_gathered_wheels_are_complete():
    """The .whl/ that scripts/gpu_wheels.sh gathered (offline check; skipped where it was not run)."""
    if not WHL.is_dir():
        pytest.skip("no .whl/: run scripts/gpu_wheels.sh (it needs the package registry)")
    assert gpu_wheels.check(WHL) == []
    size = sum(p.stat().st_size for p in WHL.glob("*.whl"))
    assert size <= gpu_wheels.LIMIT_MIB * 2**20


def test_emulated_gpu_machine_hides_what_it_lacks():
    hidden = gpu_wheels.hidden_modules()
    assert "lm_eval" in hidden and not {"deepspeed", "datasets", "fla", "torch", "yaml"} & set(hidden)
    # absent as on the machine: the import fails and a probe (transformers' importlib.util.find_spec) finds nothing
    code = ("import importlib.util, yaml\nprint('PROBE', importlib.util.find_spec('lm_eval'))\n"
            "try:\n    import lm_eval\nexcept ModuleNotFoundError as e:\n    print('HIDDEN', e)")
    r = subprocess.run([sys.executable, "scripts/gpu_wheels.py", "run", "--", sys.executable, "-c", code],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "PROBE None\nHIDDEN No module named 'lm_eval'" in r.stdout, r.stdout + r.stderr


def test_gpu_tests_collect_without_the_wheels():
    """The kernel tests of `pytest -m gpu` (gpu_check.sh) need none of the carried wheels: were .whl/ not to
    install there, they still run (the modules that need deepspeed or datasets are collection errors, which
    gpu_check.sh continues past)."""
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                     if "mark.gpu" in p.read_text())
    assert "tests/test_ops_ext.py" in modules
    cmd = [sys.executable, "scripts/gpu_wheels.py", "run", "--without-wheels", "--", sys.executable, "-c",
           "import importlib.util as u; print('ABSENT', [m for m in ('deepspeed', 'datasets') if not u.find_spec(m)])"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "ABSENT ['deepspeed', 'datasets']" in r.stdout, r.stdout + r.stderr
    cmd[6:] = ["-m", "pytest", "-q", "-m", "gpu", "--collect-only", "-p", "no:cacheprovider", *modules]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "error" not in r.stdout.lower() and " collected" in r.stdout, r.stdout[-3000:]


def test_epochs_that_fit():
    cost = lambda e: [60 + 20 * e, 40 + 10 * e]  # noqa: E731
    assert sizing.epochs_that_fit(cost, [200, 200]) == 5  # 160 <= 0.8 * 200, 180 > 160
    assert sizing.epochs_that_fit(cost, [200, 200], max_epochs=3) == 3
    assert sizing.epochs_that_fit(cost, [90, 200]) == 0.6  # 72 <= 72: 0.6 of an epoch, not 0.65
    assert sizing.epochs_that_fit(cost, [70, 200]) is None


def test_phase_costs_follow_the_measurements():
    m = {"imports_s": 4.0, "job_s": 10.0, "student_arch": "a", "cache_batch": 16,
         "eval": {"epoch_texts": 100, "final_texts": 1000, "dev_batches": 2},
         "archs": {"a": {"steps_per_epoch": 50, "step_s": 0.1, "fwd_s": 0.5, "text_s": 0.01},
                   "b": {"steps_per_epoch": 25, "step_s": 0.2, "fwd_s": 1.0, "text_s": 0.02}}}
    p1, p2 = sizing.phase_costs(m, n_train=160)(2)
    train = lambda a, f=1.0: 10 + 2 * (a["steps_per_epoch"] * a["step_s"] * f + 100 * a["text_s"])  # noqa: E731
    final = lambda a: 10 + 1000 * a["text_s"] + 2 * a["fwd_s"]  # noqa: E731
    a, b = m["archs"]["a"], m["archs"]["b"]
    assert p1 == pytest.approx(4 + train(a) + final(a) + train(b) + final(b))
    cache = 10 + 1.0 * sizing.CACHE_COST * 10  # the slower forward, 160 / 16 batches
    assert p2 == pytest.approx(4 + cache + train(a, sizing.KD_COST) + final(a))


def test_better_teacher_and_student_spec(tmp_path):
    spec = sizing.tiny(load_spec(str(ROOT / "studies" / "gpu.yaml")))
    assert spec["training"]["bf16"] is False and spec["architectures"]["hgrn2"]["config"]["hidden_size"] == 32
    assert spec["students"]["hgrn2-kd"]["k"] == 8
    assert load_spec(str(ROOT / "studies" / "gpu.yaml"))["architectures"]["hgrn2"]["config"] == {}  # untouched
    (tmp_path / "sized.json").write_text(json.dumps(spec))
    final = {"hgrn2": {"dev_loss": {"value": 4.1}}, "llama": {"dev_loss": {"value": 3.9}}}
    (tmp_path / "study.json").write_text(json.dumps({"final": final}))
    assert sizing.student(str(tmp_path)) == "llama"
    assert json.loads((tmp_path / "phase2.json").read_text())["students"]["hgrn2-kd"]["teachers"] == ["llama"]


def test_gpu_spec_compares_equal_sizes():
    import torch

    from babylm_ds.models import build_model, count_parameters

    spec = load_spec(str(ROOT / "studies" / "gpu.yaml"))
    with torch.device("meta"):
        n = [count_parameters(build_model(a["model"], **a["config"])) for a in spec["architectures"].values()]
    assert min(n) >= 58e6 and max(n) / min(n) < 1.001
    assert spec["training"]["bf16"] and spec["training"]["ds_config"].endswith("zero2.json")
    assert spec["evaluation"]["final_limit"] is None and len(spec["students"]) == 1
    assert spec["evaluation"]["epoch_tasks"] == spec["evaluation"]["tasks"]  # zero-shot at each epoch end too


def _copy_tree(dst):
    """The tracked tree (as it travels to a GPU machine, without .git) plus .whl/ when gathered and the
    extension built here (gpu_check.sh --tiny reuses it rather than compiling for minutes)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    if WHL.is_dir():
        shutil.copytree(WHL, dst / ".whl")
    for so in (ROOT / "babylm_ds").glob("_C*.so"):
        shutil.copy2(so, dst / "babylm_ds" / so.name)


def _run_tiny(tmp_path, script):
    tree, out = tmp_path / "tree", tmp_path / "out"
    _copy_tree(tree)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=sys.executable, GIT_COMMIT="0123abc", GPU_WORK=str(tmp_path / "work"), OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")))
    cmd = [sys.executable, "scripts/gpu_wheels.py", "run", "--", "bash", f"scripts/{script}", str(out), "--tiny"]
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=HANG_S)
    files = sorted(p.name for p in out.iterdir())
    env_txt = (out / "gpu_env.txt").read_text()
    assert r.returncode == 0, env_txt + r.stdout[-3000:] + r.stderr[-3000:]
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
    assert env_txt.startswith(f"commit 0123abc ({script} --tiny)")
    gpu_limits = [int(line.rsplit("on the GPU ", 1)[1].split()[0])
                  for line in env_txt.splitlines() if "on the GPU" in line]
    return out, files, env_txt, gpu_limits


@pytest.mark.slow
def test_gpu_check_tiny_end_to_end(tmp_path):
    """Command 1 on the CPU with the GPU machine's package set: CPU build, `pytest -m gpu` (collects every
    module, all skip here), the kernel benchmark, the sanitizer's case without the sanitizer."""
    out, files, env_txt, limits = _run_tiny(tmp_path, "gpu_check.sh")
    assert files == ["build.log", "gpu_env.txt", "gpu_tests.log", "kernels.log", "kernels_grid.json",
                     "kernels_grid.png", "sanitize.log"]
    assert [line.split(":")[0] for line in env_txt.splitlines() if "on the GPU" in line] == \
        ["wheels", "build", "tests", "kernels", "sanitize"][-len(limits):]
    assert sum(limits) <= GPU_CHECK_S, limits
    if list((ROOT / "babylm_ds").glob("_C*.so")):
        assert "build: --tiny reuses the extension built here" in (out / "build.log").read_text()
    tests = (out / "gpu_tests.log").read_text()
    summary = tests.strip().splitlines()[-1]  # e.g. "97 skipped, 406 deselected in 6.33s": no module failed to import
    assert "error" not in summary and " skipped" in summary and " deselected" in summary, tests[-3000:]
    assert "\nERROR " not in tests
    rows = json.loads((out / "kernels_grid.json").read_text())["results"]
    assert {r["backend"] for r in rows} >= {"cpu", "torch", "sdpa"} and all(r["fwd_bwd_s"] for r in rows)
    assert "SANITIZE_CASE_OK" in (out / "sanitize.log").read_text()


@pytest.mark.slow
def test_gpu_learn_tiny_end_to_end(tmp_path):
    """Command 2 on the CPU with the GPU machine's package set: the sized two-phase study at test size, the
    student taught by phase 1's better architecture, the report with intervals copied out."""
    out, files, env_txt, limits = _run_tiny(tmp_path, "gpu_learn.sh")
    assert files == ["gpu_env.txt", "learn.log", "runs.json", "sizing.json", "study.json", "study.md", "study.png"]
    assert sum(limits) <= GPU_LEARN_S, limits
    plan = json.loads((out / "sizing.json").read_text())
    assert plan["epochs"] == 1 and set(plan["warmup"]["archs"]) == {"hgrn2", "llama"}
    res = json.loads((out / "study.json").read_text())
    assert set(res["final"]) == {"hgrn2", "llama", "hgrn2-kd"}
    better = min(("hgrn2", "llama"), key=lambda a: res["final"][a]["dev_loss"]["value"])
    assert f"distilled from {better}" in (out / "learn.log").read_text()
    assert set(res["differences"]) == {"hgrn2 - llama", "hgrn2-kd - hgrn2"}
    for group in res["final"].values():
        lo, hi = group["blimp"]["ci95"]
        assert lo <= group["blimp"]["value"] <= hi
    runs = json.loads((out / "runs.json").read_text())
    assert {"hgrn2-lr0.002-s0", "llama-lr0.001-s0", "hgrn2-kd-s0"} <= set(runs)
    assert runs["hgrn2-kd-s0"]["summary"]["steps"] == res["steps"]["hgrn2-kd-s0"] == res["steps"]["hgrn2-lr0.002-s0"]

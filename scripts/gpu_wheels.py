"""The wheels the GPU commands carry (`scripts/gpu_wheels.sh`): which, and whether a folder holds them all.

The lent GPU machine (Python 3.12, linux x86_64, no network) has the packages in GPU_PACKAGES, listed from
the workplace's description of its image (versions where it gives them). What the GPU run needs beyond
them (NEEDED, pinned in requirements.txt) travels as wheels in the git-ignored `.whl/`, together with
every requirement of theirs the machine lacks, each at the version installed here (what the tests run
with).

    python scripts/gpu_wheels.py plan          # NAME==VERSION of every wheel to gather, one a line
    python scripts/gpu_wheels.py check [.whl]  # exit 1 with one line per problem; no network
    python scripts/gpu_wheels.py run -- CMD    # CMD with only the GPU machine's packages + the wheels importable
    python scripts/gpu_wheels.py run --without-wheels -- CMD   # ... the GPU machine's packages only

`run` emulates the GPU machine's package set here: every Python process under CMD (PYTHONPATH carries a
sitecustomize) fails to import a module whose distributions are all neither on the machine nor carried.
"""
import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("deepspeed", "datasets", "flash-linear-attention")  # the training launchers, prepare, hgrn2 "fla"
BUILT = {"deepspeed"}  # no wheel on the registry: built here (DS_BUILD_OPS=0, pure Python)
LIMIT_MIB = 40  # the working tree travels too (≈ 8 MiB), 64 MiB together
# The GPU machine's Python packages (image 'cuda', read 2026-11-17; versions as one session's pip list gave
# them). Carry a package only when it is missing here or needed at another version.
GPU_PACKAGES = dict.fromkeys("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp""".split())
GPU_PACKAGES.update({"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                     "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0", "triton": "3.6.0"})
# The machine's interpreter, for requirement markers and wheel tags.
TARGET = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def pins():
    """{name: version} that requirements.txt pins."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if m := re.match(r"\s*([A-Za-z0-9_.\[\]-]+)==([^\s;#]+)", line):
            out[canonicalize_name(m[1].split("[")[0])] = m[2]
    return out


def requires(metadata):
    """The requirements of a distribution's metadata that apply on the GPU machine (no extras)."""
    reqs = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


def plan():
    """[(name, version)] of the wheels to carry: NEEDED and, transitively, every requirement of theirs that
    the GPU machine lacks, each at the version installed here."""
    todo, seen, out = list(NEEDED), set(), []
    while todo:
        name = canonicalize_name(todo.pop(0))
        if name in seen or name in GPU_PACKAGES and name not in NEEDED:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"gpu_wheels: {name} is not installed here; install requirements.txt first") from None
        out.append((name, dist.version))
        todo += [r.name for r in requires(dist.metadata)]
    return out


def _wheel_metadata(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return md.PathDistribution(zipfile.Path(z, name).parent).metadata


def _fits(tags):
    """Whether a wheel's tags install on CPython 3.12, linux x86_64."""
    for t in tags:
        py_ok = t.interpreter in ("py3", "py312", "cp312") or (t.abi == "abi3" and t.interpreter.startswith("cp3")
                                                      and int(t.interpreter[3:]) <= 12)
        plat_ok = t.platform == "any" or (t.platform.startswith("manylinux") and t.platform.endswith("x86_64"))
        if py_ok and t.abi in ("none", "abi3", "cp312") and plat_ok:
            return True
    return False


def check(folder):
    """Problems (one line each) with the wheels in `folder` as the GPU run's missing packages."""
    folder = Path(folder)
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return [f"{folder}: no wheels; run scripts/gpu_wheels.sh"]
    have, problems = {}, []
    for w in wheels:
        name, version, _, tags = parse_wheel_filename(w.name)
        if name in have:
            problems.append(f"{w.name}: a second version of {name} ({have[name][0]} too); keep one")
        have[name] = (version, _wheel_metadata(w))
        if not _fits(tags):
            problems.append(f"{w.name}: does not install on CPython 3.12 linux x86_64")
    wanted = dict(plan())
    for name, version in wanted.items():
        if name not in have:
            problems.append(f"{name}=={version} is missing")
        elif have[name][0] != Version(version):
            problems.append(f"{name} is {have[name][0]}, the tests here run {version}")
    pinned = pins()
    reqs = [("requirements.txt pin", Requirement(f"{n}=={pinned[n]}")) for n in NEEDED]
    reqs += [(f"{n} {v}", r) for n, (v, meta) in have.items() for r in requires(meta)]
    for who, req in reqs:
        name = canonicalize_name(req.name)
        if name in have:
            version = have[name][0]
        elif name in GPU_PACKAGES:
            version = GPU_PACKAGES[name] and Version(GPU_PACKAGES[name])
        else:
            problems.append(f"{who} needs {req}, which neither the GPU machine nor {folder} has")
            continue
        if version and req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{who} needs {req}, the carried/GPU version is {version}")
    size = sum(w.stat().st_size for w in wheels) / 2**20
    if size > LIMIT_MIB:
        problems.append(f"{folder}: {size:.1f} MiB of wheels, over the {LIMIT_MIB} MiB this run may carry")
    return problems


def unverified(folder):
    """Requirements met by a GPU package whose version the machine's description does not give."""
    out = set()
    for w in sorted(Path(folder).glob("*.whl")):
        for r in requires(_wheel_metadata(w)):
            name = canonicalize_name(r.name)
            if name in GPU_PACKAGES and GPU_PACKAGES[name] is None and r.specifier:
                out.add(f"{name}{r.specifier}")
    return sorted(out)


HIDE = """import importlib.machinery, os, site, sys

HIDDEN, SITE = {hidden!r}, [os.path.join(d, "") for d in site.getsitepackages()]


class _GPUMachinePathFinder(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):  # as if not installed: a copy vendored elsewhere still counts
        if name in HIDDEN:  # not found, as on the machine: `import` fails, importlib.util.find_spec gives None
            path = [p for p in (path or sys.path) if os.path.join(os.path.abspath(p or "."), "") not in SITE]
        return super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = _GPUMachinePathFinder
"""


def hidden_modules(wheels=True):
    """Top-level modules installed here that the GPU machine would lack: their distributions are neither
    GPU_PACKAGES, nor planned wheels (unless `wheels` is false: the machine without .whl/), nor this project,
    nor needed by one of those as installed here (a package there brings its own needs, whatever they are
    at its version)."""
    todo, allowed = list(GPU_PACKAGES) + [name for name, _ in plan() if wheels] + ["babylm-ds"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in allowed:
            continue
        allowed.add(name)
        try:
            todo += [r.name for r in requires(md.distribution(name).metadata)]
        except md.PackageNotFoundError:
            pass
    return sorted(m for m, dists in md.packages_distributions().items()
                  if m not in sys.stdlib_module_names and not any(canonicalize_name(d) in allowed for d in dists))


def run(cmd, wheels=True):
    """Exit status of `cmd` run with hidden_modules(wheels) unimportable in its Python processes."""
    with tempfile.TemporaryDirectory() as d:
        Path(d, "sitecustomize.py").write_text(HIDE.format(hidden=set(hidden_modules(wheels))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [d, os.environ.get("PYTHONPATH")]))}
        return subprocess.run(cmd, env=env).returncode


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("plan", help="print NAME==VERSION of every wheel to gather")
    c = sub.add_parser("check", help="check a folder of wheels (exit 1 with one line per problem)")
    c.add_argument("folder", nargs="?", default=str(ROOT / ".whl"))
    r = sub.add_parser("run", help="run a command with the GPU machine's packages (and the wheels) only")
    r.add_argument("--without-wheels", action="store_true", help="the machine as it is, without .whl/ installed")
    r.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    if a.cmd == "run":
        return run(a.command[1:] if a.command[:1] == ["--"] else a.command, not a.without_wheels)
    if a.cmd == "plan":
        print("\n".join(f"{n}=={v}" for n, v in plan()))
        return 0
    problems = check(a.folder)
    for line in problems:
        print(f"gpu_wheels: {line}", file=sys.stderr)
    if not problems:
        n = len(list(Path(a.folder).glob("*.whl")))
        print(f"gpu_wheels: {a.folder}: {n} wheels, complete for the GPU machine; versions there to confirm: "
              + (", ".join(unverified(a.folder)) or "none"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

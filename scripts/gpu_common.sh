# Sourced by scripts/gpu_check.sh and scripts/gpu_learn.sh: arguments, environment, the machine record, the
# carried wheels and the time-limited steps. Both: GIT_COMMIT=<sha> bash scripts/gpu_X.sh OUTDIR [--tiny]
# (the tree arrives on a GPU machine without .git: the commit must be passed literally). --tiny: the same
# steps at CPU test size, fp32 (what needs CUDA is skipped or swapped for its CPU twin, and logged as such).
set -uo pipefail
out=${1:?usage: GIT_COMMIT=<sha> bash $0 OUTDIR [--tiny]}
tiny=0
[[ ${2:-} == --tiny ]] && tiny=1
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
((tiny)) && export DS_ACCELERATOR=cpu
status=0

limit() {  # limit GPU_S[/TINY_S]: the seconds that apply here
  if ((tiny)); then echo "${1#*/}"; else echo "${1%/*}"; fi
}

step() {  # step NAME GPU_S[/TINY_S] LOG CMD...: CMD under its time limit, output appended to OUT/LOG as it comes
  local name=$1 gpu_s=${2%/*} limit log=$3 t0=$SECONDS rc
  limit=$(limit "$2")
  shift 3
  echo "=== $name (limit $limit s): $*" >>"$out/$log"
  timeout -k 5 "$limit" "$@" >>"$out/$log" 2>&1
  rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (limit $limit s; on the GPU $gpu_s s)$( ((rc == 124 || rc == 137)) \
    && echo ', stopped at its limit')" | tee -a "$out/gpu_env.txt"
  ((rc == 0)) || status=1
  return $rc
}

machine() {  # the commit, device, versions and mode, first lines of OUT/gpu_env.txt
  {
    echo "commit ${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)} ($(basename "$0")$( ((tiny)) && echo ' --tiny'))"
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "gpu none"
    "$py" - <<'PY'
import importlib.metadata as m, platform
names = ("torch", "triton", "transformers", "tokenizers", "deepspeed", "flash-linear-attention", "datasets",
         "pydantic", "pyarrow", "fsspec", "pandas", "numpy")
def v(d):
    try:
        return m.version(d)
    except m.PackageNotFoundError:
        return "-"
print("python", platform.python_version(), *(f"{d} {v(d)}" for d in names))
PY
    command -v nvcc >/dev/null && nvcc --version | tail -1
  } >>"$out/gpu_env.txt" 2>&1
}

wheels() {  # install the carried .whl/ into a private dir on PYTHONPATH, from the files alone (no network)
  if [[ ! -d .whl ]]; then
    echo "wheels: no .whl/ (this environment's packages)" | tee -a "$out/gpu_env.txt"
    return 0
  fi
  if "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    local site=${GPU_SITE:-/tmp/gpu_site}
    step wheels 15 gpu_env.txt "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .whl/*.whl && export PYTHONPATH=$site:$PYTHONPATH
  else  # the cp312 wheels cannot install here: pip resolves them offline for 3.12, this environment runs
    step wheels 15/60 gpu_env.txt "$py" -m pip install -q --dry-run --no-index --no-deps --find-links .whl \
      --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --only-binary=:all: \
      --target "$(mktemp -d)" .whl/*.whl
  fi
}

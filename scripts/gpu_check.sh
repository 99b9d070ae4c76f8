#!/usr/bin/env bash
# GPU command 1 on a lent 1-GPU machine: confirm the kernels. Steps (limits add up to 6 min 5 s; a step past
# its limit is stopped and recorded, the next one runs; every result is written as it comes):
#   wheels  install the carried .whl/ (scripts/gpu_wheels.sh) into a private dir       15 s
#   build   `babylm_ds._C` for sm_90 in place (a failed build stops nothing else)      130 s
#           (measured here: nvcc of the kernels for sm_90 alone 49 s of CPU; the .cpp files build beside it)
#   tests   `pytest -m gpu tests` with a per-test --timeout (4 workers when xdist is there) 150 s
#   kernels `benchmarks/kernels.py --grid gpu --repeats 5` (JSON after every case)       50 s
#   sanitize compute-sanitizer memcheck + racecheck of scripts/gpu_sanitize.py (one small fwd+bwd per
#           precision); "unsupported" where the machine's runtime refuses the tool (gVisor)  30 s
# Results in OUTDIR (8 files): gpu_env.txt (commit, device, versions, step times), build.log, gpu_tests.log,
# kernels.log, kernels_grid.{json,png}, sanitize.log.
# Usage: GIT_COMMIT=<sha> bash scripts/gpu_check.sh OUTDIR [--tiny]   (--tiny: on a CPU, see gpu_common.sh)
cd "$(dirname "$0")/.." || exit 1
source scripts/gpu_common.sh
machine
wheels

if ((tiny)); then  # CPU kernels only (the extension built here, when there is one), CPU benchmark shape,
  # the sanitizer's case without the sanitizer
  build=(env BABYLM_DS_CUDA=0 "$py" setup.py build_ext --inplace)
  compgen -G "babylm_ds/_C*.so" >/dev/null &&
    build=("$py" -c "from babylm_ds import _C; print('build: --tiny reuses the extension built here,', _C.__file__)")
  bench=(--device cpu --B 1 --H 2 --K 16 --V 8 --T 64 --repeats 1)
else
  build=(env BABYLM_DS_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
         "$py" setup.py build_ext --inplace)
  bench=(--grid gpu --repeats 5)
fi
step build 130/900 build.log "${build[@]}" || tail -20 "$out/build.log"

# a test module that cannot import (a carried wheel that failed there) costs only its own tests
pytest_args=(-q -m gpu -p no:cacheprovider -rs --continue-on-collection-errors tests)
"$py" -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout 60) \
  || echo "tests: pytest-timeout not installed here, no per-test limit" | tee -a "$out/gpu_env.txt"
((!tiny)) && "$py" -c "import xdist" 2>/dev/null && pytest_args+=(-n 4)
step tests 150/900 gpu_tests.log "$py" -m pytest "${pytest_args[@]}"
tail -3 "$out/gpu_tests.log"

step kernels 50/600 kernels.log "$py" benchmarks/kernels.py "${bench[@]}" --out "$out/kernels_grid.json"
grep -E "^(PASS|FAIL|N/A)" "$out/kernels.log"

sanitize() {  # memcheck and racecheck of the case; exit 0 with "unsupported" where the tool cannot run
  local tool
  if ((tiny)); then
    "$py" scripts/gpu_sanitize.py --device cpu
    echo "sanitize: compute-sanitizer needs a GPU: skipped (--tiny)"
    return
  fi
  if ! command -v compute-sanitizer >/dev/null; then
    echo "sanitize: unsupported (compute-sanitizer not found)"
    return 0
  fi
  local log rc
  log=$(mktemp)
  for tool in memcheck racecheck; do
    # one cudaMalloc per tensor, so that memcheck sees each tensor's bounds (not the caching allocator's)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 99 \
      "$py" scripts/gpu_sanitize.py >"$log" 2>&1
    rc=$?
    cat "$log"
    if grep -qiE "device not supported|not supported on this|error 999|LibraryNotLoaded" "$log"; then
      echo "sanitize: $tool unsupported on this machine (exit $rc)"
      continue
    fi
    ((rc == 0)) || { echo "sanitize: $tool found errors (exit $rc)"; return $rc; }
    echo "sanitize: $tool clean"
  done
  rm -f "$log"
}
export -f sanitize
export tiny py out
step sanitize 30/300 sanitize.log bash -c sanitize
grep "^sanitize:" "$out/sanitize.log"
exit $status

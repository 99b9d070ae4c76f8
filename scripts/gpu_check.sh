#!/usr/bin/env bash
# GPU validation on a CUDA machine with torch + Triton: build `babylm_ds._C` for this GPU in place,
# run every gpu-marked test, then the kernel benchmark (fp32 default grid; bf16 at B8 H16).
# Usage: GIT_COMMIT=<sha> [BENCH="fp32 bf16"] bash scripts/gpu_check.sh OUTDIR   (<= 7 files in OUTDIR)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import fla; print('fla', fla.__version__)" 2>&1 | tail -1
  nvcc --version | tail -1
} | tee "$out/gpu_env.txt"
start=$(date +%s)
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} BABYLM_DS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
  python3 setup.py build_ext --inplace >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build_ext: $(( $(date +%s) - start )) s" | tee -a "$out/gpu_env.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_ops_ext.py tests/test_ops.py tests/test_models.py \
  2>&1 | tee "$out/gpu_tests.log" | tail -25
tag=$(python3 -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '_', torch.cuda.get_device_name()).strip('_').lower())")
bench=${BENCH:-fp32 bf16}
if [[ $bench == *fp32* ]]; then
  python3 benchmarks/kernels.py --repeats 20 --out "$out/kernels_${tag}_fp32.json" | tail -32
fi
if [[ $bench == *bf16* ]]; then
  python3 benchmarks/kernels.py --dtype bfloat16 --B 8 --H 16 --T 1024 4096 16384 --repeats 10 \
    --out "$out/kernels_${tag}_bf16.json" | tail -20
fi

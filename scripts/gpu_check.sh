#!/usr/bin/env bash
# GPU validation on a 1-GPU CUDA machine with torch + Triton (+ fla, deepspeed), inside ~9 minutes:
#   1. build `babylm_ds._C` for this GPU in place
#   2. every gpu-marked test of the op, the Triton kernels and the models
#   3. the kernel benchmark on issue 10's GPU grid (`benchmarks/kernels.py --grid gpu`)
#   4. a 1-GPU `deepspeed` bf16 run of the pipeline's distillation stage (tiny presets, 30 steps)
# Step limits add up to 9 minutes (120 + 180 + 120 + 120 s); a step past its limit is recorded and the
# next one runs. Results, device, versions and commit go to OUTDIR (9 files).
# Usage: GIT_COMMIT=<sha> bash scripts/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to OUTDIR/NAME.log, record the status
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/gpu_env.txt"
  [[ $rc == 0 ]] || status=1
  return $rc
}
{
  echo "commit ${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import importlib.metadata as m; print(*(f'{d} {m.version(d)}' for d in ('flash-linear-attention', 'deepspeed')))" 2>&1 | tail -1
  nvcc --version | tail -1
} | tee "$out/gpu_env.txt"

step build 120 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" BABYLM_DS_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" \
  python3 setup.py build_ext --inplace || { tail -40 "$out/build.log"; exit 1; }
step gpu_tests 180 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_ops_ext.py tests/test_ops.py \
  tests/test_ops_varlen.py tests/test_models.py
tail -5 "$out/gpu_tests.log"
step kernels 120 python3 benchmarks/kernels.py --grid gpu --repeats 10 --out "$out/kernels_grid.json"
grep -E "^(PASS|FAIL|N/A)|^ +[0-9]+ |^(bfloat16|float32) " "$out/kernels.log"

# distillation stage of the pipeline, bf16 on one GPU: prepare -> 2 tiny teachers -> logit cache -> distill
work=$(mktemp -d)
python3 -c "import json, sys; c = json.load(open('ds_configs/zero2.json')); c['bf16'] = {'enabled': True}; \
json.dump(c, open(sys.argv[1], 'w'), indent=2)" "$work/zero2_bf16.json"
step distill 120 python3 launchers/pipeline.py --out "$work/pipe" --stages prepare,teachers,cache,distill \
  --world-size 1 --launcher deepspeed --ds-config "$work/zero2_bf16.json" --max-words 20000 --vocab-size 500 \
  --seq-len 64 --steps 30 --micro-batch 8 --k 8
tail -3 "$out/distill.log"
cp "$work/pipe/runs/student-kd/summary.json" "$out/distill_summary.json" 2>/dev/null
cp "$work/pipe/runs/student-kd/metrics.jsonl" "$out/distill_metrics.jsonl" 2>/dev/null
rm -rf "$work"
exit $status

#!/usr/bin/env bash
# GPU command 2 on a lent 1-GPU machine: the first GPU learning run (studies/gpu.yaml; babylm_ds/study/sizing.py).
# BabyHGRN-58M and BabyLlama-58M on the whole embedded corpus (DeepSpeed ZeRO-2, bf16), epochs sized from a
# measured warm-up to fit; then a BabyHGRN student distilled from the better of the two; every model scored on
# every item of BLiMP, supplement and EWoK with bootstrap intervals. Steps (limits add up to 6.5 minutes; a
# step past its limit is stopped and recorded, the next one runs; results are copied out after each phase):
#   wheels   install the carried .whl/ (scripts/gpu_wheels.sh) into a private dir                    15 s
#   prepare  tokenizer and packed windows of the embedded corpus                                       30 s
#   size     warm-up (timed steps, forwards, scoring) -> the epochs that fit both phases             50 s
#   phase1   `babylm-ds study`: hgrn2 and llama trained (dev loss + zero-shot each epoch), evaluated  155 s
#   phase2   the student of the better one: logit cache, distillation, evaluation, the report       120 s
#   collect  after each phase: study.{json,md,png}, runs.json                                   2 x 10 s
# Results in OUTDIR (7 files): gpu_env.txt, learn.log, sizing.json, study.{json,md,png}, runs.json.
# Usage: GIT_COMMIT=<sha> bash scripts/gpu_learn.sh OUTDIR [--tiny]   (--tiny: on a CPU, see gpu_common.sh)
cd "$(dirname "$0")/.." || exit 1
source scripts/gpu_common.sh
machine
wheels

work=${GPU_WORK:-$(mktemp -d)}
p1=155/1800 p2=120/1800 extra=() prep=() jobs=()  # the phases' limits (the sizing plans 80% of them)
# CPU test size: one epoch whatever the measured speed; one thread a job (a shared CPU, OpenMP not oversubscribed)
((tiny)) && extra=(--max-epochs 1) prep=(--tiny) jobs=(--threads 1)
sizing=("$py" -m babylm_ds.study.sizing)
step prepare 30/600 learn.log "${sizing[@]}" prepare studies/gpu.yaml --study-dir "$work" "${prep[@]}" &&
  step size 50/600 learn.log "${sizing[@]}" size "$work" --phase1 "$(limit $p1)" --phase2 "$(limit $p2)" \
    --report "$out/sizing.json" "${extra[@]}" &&
  tail -1 "$out/learn.log" &&
  step phase1 $p1 learn.log "$py" -m babylm_ds.cli study "$work/phase1.json" --out "$work" "${jobs[@]}"
step collect 10/300 learn.log "${sizing[@]}" collect "$work" "$out"
if [[ -f $work/study.json ]]; then
  step phase2 $p2 learn.log bash -c '"$0" -m babylm_ds.study.sizing student "$1" &&
    "$0" -m babylm_ds.cli study "$1/phase2.json" --out "$1" "${@:2}"' "$py" "$work" "${jobs[@]}"
  step collect 10/300 learn.log "${sizing[@]}" collect "$work" "$out"
fi
[[ -f $out/study.md ]] && cat "$out/study.md"
exit $status

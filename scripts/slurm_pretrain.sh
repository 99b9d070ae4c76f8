#!/bin/bash
# Multi-node ZeRO pretraining under SLURM: srun starts every rank (one task per GPU), rendezvous on the first node.
#   sbatch --nodes 4 scripts/slurm_pretrain.sh --model llama-360m --data data/10M --out outputs/llama-360m
# Any launcher flag can follow; DS_CONFIG, GPUS_PER_NODE and SCRIPT (default launchers/pretrain.py; or
# launchers/distill.py) are read from the environment.
#
# Time limits and preemption: SLURM sends SIGUSR1 to this script 120 s before the time limit (--signal below;
# change @120 to give a large model's save more time). The script passes it (and a SIGTERM) to srun, which
# passes it to every rank: they finish the current optimizer step, save a sealed checkpoint and exit 75. If
# the run is not finished then (no OUT/summary.json), the script requeues the job (scontrol requeue), and the
# requeued job resumes from that checkpoint (--resume below). A preempted job is requeued by SLURM itself
# (--requeue) after the same save, on SIGTERM.
#SBATCH --job-name=babylm-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
[ -f .venv/bin/activate ] && . .venv/bin/activate
export HF_HUB_OFFLINE=1 TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export MASTER_ADDR MASTER_PORT

# --resume when OUT already holds a checkpoint (a requeued job picks up where it stopped; --resume with
# nothing to resume is refused); a dead rank fails the step's collective after --dist-timeout seconds and
# srun (--kill-on-bad-exit) then ends the others, ending the job instead of hanging.
RESUME=(); OUT=""; prev=""
for arg in "$@"; do
    [ "$prev" = "--out" ] && OUT="$arg" && [ -f "$arg/checkpoints/latest" ] && RESUME=(--resume)
    prev="$arg"
done

STOP=""
forward() { STOP="$1"; [ -n "${SRUN:-}" ] && kill -s "$1" "$SRUN" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
# each task is one rank: the launcher reads RANK / LOCAL_RANK / WORLD_SIZE, as torchrun would set them
srun --kill-on-bad-exit=1 --ntasks-per-node="$GPUS_PER_NODE" bash -c \
    'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec python "$@"' rank \
    "${SCRIPT:-launchers/pretrain.py}" --ds_config "${DS_CONFIG:-ds_configs/zero2.json}" "${RESUME[@]}" \
    --dist-timeout 600 "$@" &
SRUN=$!
[ -n "$STOP" ] && kill -s "$STOP" "$SRUN" 2>/dev/null  # a signal that came before srun started
while :; do  # a trapped signal interrupts `wait`; wait again until srun itself has ended
    wait "$SRUN"; rc=$?
    kill -0 "$SRUN" 2>/dev/null || break
done
if { [ -n "$STOP" ] || [ "$rc" -eq 75 ]; } && [ -n "$OUT" ] && [ ! -f "$OUT/summary.json" ]; then
    echo "slurm_pretrain.sh: stopped by SIG${STOP:-TERM} (exit $rc), run not finished: requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"

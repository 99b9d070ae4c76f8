#!/bin/bash
# Multi-node ZeRO pretraining under SLURM: one torchrun per node (srun), rendezvous on the first node.
#   sbatch --nodes 4 scripts/slurm_pretrain.sh --model llama-360m --data data/10M --out outputs/llama-360m
# Any launcher flag can follow; DS_CONFIG and GPUS_PER_NODE are read from the environment.
#SBATCH --job-name=babylm-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
[ -f .venv/bin/activate ] && . .venv/bin/activate
export HF_HUB_OFFLINE=1 TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"

# --resume when OUT already holds a checkpoint (a requeued job picks up where it stopped; --resume with
# nothing to resume is refused); a dead rank fails the step's collective after --dist-timeout seconds and
# torchrun then stops its node, ending the job instead of hanging.
RESUME=(); prev=""
for arg in "$@"; do
    [ "$prev" = "--out" ] && [ -f "$arg/checkpoints/latest" ] && RESUME=(--resume)
    prev="$arg"
done
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$SLURM_NODEID" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    launchers/pretrain.py --ds_config "${DS_CONFIG:-ds_configs/zero2.json}" "${RESUME[@]}" --dist-timeout 600 "$@"

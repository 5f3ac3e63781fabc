#!/usr/bin/env bash
# SLURM GPU cluster: writes an sbatch script to WORKDIR/logs/gpt_ads.sbatch and submits it.
#   launch/slurm.sh [--dry-run] [--nodes=N (1)] [--gpus_per_node=G (8)] [--partition=P] [--time=HH:MM:SS (04:00:00)]
#                   [--cpus_per_task=C] [--job_name=NAME (gpt-ads)] WORKDIR [CONFIG_ARG] [--config.x=y ...]
#   launch/slurm.sh --nodes=2 --partition=gpu /shared/runs/l size=large,run=long
# Run it from a shell where gpt-ads-train is on PATH (the venv active): sbatch passes that environment to the job.
# The repo and WORKDIR must be on a file system that every node sees (WORKDIR is made absolute here).
#
# One task per GPU (--ntasks-per-node=G, --gres=gpu:G, no per-task GPU binding): that is the layout JAX's SLURM
# detection is built for. jax.distributed.initialize() reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
# SLURM_PROCID and SLURM_LOCALID (all set by srun): process count = SLURM_NTASKS, id = SLURM_PROCID, coordinator =
# the step's first node on port 61440 + SLURM_JOB_ID % 4096 (JAX_COORDINATOR_PORT overrides), and each process
# keeps only GPU number SLURM_LOCALID of the GPUs it sees. So every task must see all G GPUs of its node: with one
# task per node JAX would use GPU 0 alone, and --gpus-per-task=1 (or a site-wide --gpu-bind) makes each task see a
# single GPU numbered 0, which breaks for SLURM_LOCALID > 0.
set -euo pipefail
USAGE="launch/slurm.sh [--dry-run] [--nodes=N (1)] [--gpus_per_node=G (8)] [--partition=P] [--time=HH:MM:SS (04:00:00)] [--cpus_per_task=C] [--job_name=NAME] WORKDIR [CONFIG_ARG] [--config.x=y ...]"
. "$(dirname "$0")/_lib.sh"

dry=0 nodes=1 gpus=8 partition="" time_limit="04:00:00" cpus="" job_name="gpt-ads"
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --nodes=*) nodes=${1#*=} ;;
    --gpus_per_node=*) gpus=${1#*=} ;;
    --partition=*) partition=${1#*=} ;;
    --time=*) time_limit=${1#*=} ;;
    --cpus_per_task=*) cpus=${1#*=} ;;
    --job_name=*) job_name=${1#*=} ;;
    -h|--help) echo "usage: $USAGE"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
is_uint "$nodes" && ((nodes >= 1)) || die "--nodes must be a positive integer, got '$nodes'"
is_uint "$gpus" && ((gpus >= 1)) || die "--gpus_per_node must be a positive integer, got '$gpus'"
[[ -z "$cpus" ]] || { is_uint "$cpus" && ((cpus >= 1)); } || die "--cpus_per_task must be a positive integer, got '$cpus'"
[[ "$time_limit" =~ ^[0-9:-]+$ ]] || die "--time must look like HH:MM:SS or D-HH:MM:SS, got '$time_limit'"
parse_run_args "$@"

root="$(cd "$(dirname "$0")/.." && pwd)"
[[ "$WORKDIR" == /* ]] || WORKDIR="$PWD/$WORKDIR"
WORKDIR=${WORKDIR%/}
logdir="$WORKDIR/logs"
script_path="$logdir/gpt_ads.sbatch"
train=(gpt-ads-train "--config=${root}/configs/default.py${CONFIG_SUFFIX}" "--workdir=${WORKDIR}" "${TRAIN_FLAGS[@]}")
srun=(srun --kill-on-bad-exit=1 --label)
[[ -n "$cpus" ]] && srun+=("--cpus-per-task=$cpus")

script="#!/bin/bash
#SBATCH --job-name=$(printf %q "$job_name")
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gres=gpu:$gpus
#SBATCH --time=$time_limit
#SBATCH --output=$(printf %q "$logdir")/slurm_%j.out"
[[ -n "$partition" ]] && script+="
#SBATCH --partition=$(printf %q "$partition")"
[[ -n "$cpus" ]] && script+="
#SBATCH --cpus-per-task=$cpus"
script+="
# One process per GPU ($nodes x $gpus = $((nodes * gpus)) processes); JAX takes the process count, ids and the
# coordinator from srun's SLURM_* variables. --kill-on-bad-exit: one failed task ends the whole step.
set -euo pipefail
cd $(printf %q "$root")
unset JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID JAX_LOCAL_DEVICE_IDS  # (from the submitting shell)
export GPT_ADS_DISTRIBUTED=1
$(qjoin "${srun[@]}" "${train[@]}")"

if [[ $dry == 1 ]]; then
  echo "mkdir -p $(qjoin "$logdir")"
  echo "cat > $(qjoin "$script_path") <<'GPT_ADS_EOF'"
  echo "$script"
  echo "GPT_ADS_EOF"
  echo "sbatch $(qjoin "$script_path")"
  exit 0
fi
command -v sbatch >/dev/null || die "sbatch is not on PATH (run this on a SLURM login node)"
mkdir -p "$logdir"  # sbatch does not create the --output directory
printf '%s\n' "$script" > "$script_path"
sbatch "$script_path"

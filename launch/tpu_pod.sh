#!/usr/bin/env bash
# Cloud TPU VM pod slice: runs gpt-ads-train on every worker of TPU NAME at once (gcloud ... ssh --worker=all).
#   launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=P] [--repo_dir=DIR (~/gpt_ads)] [--venv=DIR (.venv)]
#                     [--setup] WORKDIR [CONFIG_ARG] [--config.x=y ...]
#   launch/tpu_pod.sh --tpu=my-v5e-32 --zone=us-west4-a --setup /mnt/shared/run1 size=large,run=long
# The repo must already be at --repo_dir on every worker (git clone it there with --worker=all, or tpu-vm scp
# --recurse --worker=all a checkout without its .venv). --setup first creates --venv (relative to --repo_dir; empty: no venv) and installs the package
# with the TPU runtime: pip install -c constraints.txt -e . 'jax[tpu]'. WORKDIR is a path on the workers and must be
# one directory that all of them share (an NFS / Filestore or gcsfuse mount), since checkpoints are written by all.
# Each worker runs with GPT_ADS_DISTRIBUTED=1 only: jax.distributed.initialize() finds the coordinator (worker 0,
# port 8482), the process count and this worker's id from the TPU VM metadata server (GceTpuCluster).
set -euo pipefail
USAGE="launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=P] [--repo_dir=DIR (~/gpt_ads)] [--venv=DIR (.venv)] [--setup] WORKDIR [CONFIG_ARG] [--config.x=y ...]"
. "$(dirname "$0")/_lib.sh"

# shellcheck disable=SC2088  # ~ stays literal here; qpath leaves it unquoted for the remote shell
dry=0 setup=0 tpu="" zone="" project="" repo_dir="~/gpt_ads" venv=".venv"
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --setup) setup=1 ;;
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --repo_dir=*) repo_dir=${1#*=} ;;
    --venv=*) venv=${1#*=} ;;
    -h|--help) echo "usage: $USAGE"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
[[ -n "$tpu" ]] || die "--tpu=NAME is required"
[[ -n "$zone" ]] || die "--zone=ZONE is required"
[[ -n "$repo_dir" ]] || die "--repo_dir must not be empty"
parse_run_args "$@"

gcloud=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone")
[[ -n "$project" ]] && gcloud+=("--project=$project")
gcloud+=(--worker=all)

cd_repo="cd $(qpath "$repo_dir")"
activate=""
[[ -n "$venv" ]] && activate=" && . $(qpath "$venv")/bin/activate"
train=(gpt-ads-train "--config=configs/default.py${CONFIG_SUFFIX}" "--workdir=${WORKDIR}" "${TRAIN_FLAGS[@]}")
run_cmd="${cd_repo}${activate} && GPT_ADS_DISTRIBUTED=1 $(qjoin "${train[@]}")"
setup_cmd=""
if [[ $setup == 1 ]]; then
  setup_cmd="${cd_repo}"
  [[ -n "$venv" ]] && setup_cmd+=" && python3 -m venv $(qpath "$venv")${activate}"
  setup_cmd+=" && python3 -m pip install -c constraints.txt -e . \"jax[tpu]\""
fi

if [[ $dry == 1 ]]; then
  [[ -n "$setup_cmd" ]] && echo "$(qjoin "${gcloud[@]}") --command=$(sq "$setup_cmd")"
  echo "$(qjoin "${gcloud[@]}") --command=$(sq "$run_cmd")"
  exit 0
fi
command -v gcloud >/dev/null || die "gcloud is not on PATH (https://cloud.google.com/sdk/docs/install)"
[[ -n "$setup_cmd" ]] && "${gcloud[@]}" "--command=$setup_cmd"
exec "${gcloud[@]}" "--command=$run_cmd"

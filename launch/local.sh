#!/usr/bin/env bash
# Single-host run (CPU or one GPU/TPU host): launch/local.sh [--dry-run] WORKDIR [CONFIG_ARG] [--config.x=y ...]
#   launch/local.sh /tmp/demo                  # the demo config
#   launch/local.sh /tmp/long long             # configs/default.py:long
#   launch/local.sh --dry-run /tmp/l size=large,run=long --config.train.batch_size=128
set -euo pipefail
dry=0
if [[ "${1:-}" == "--dry-run" ]]; then dry=1; shift; fi
workdir="${1:?usage: launch/local.sh [--dry-run] WORKDIR [CONFIG_ARG] [--config.x=y ...]}"; shift
arg=""
if [[ $# -gt 0 && "$1" != --* ]]; then arg=":$1"; shift; fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cmd=(gpt-ads-train "--config=${root}/configs/default.py${arg}" "--workdir=${workdir}" "$@")
if [[ $dry == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"

#!/usr/bin/env bash
# N local processes of gpt-ads-train on 127.0.0.1, CPU only: a multi-host run on one machine (used by the tests).
#   launch/multiprocess.sh [--dry-run] [--num_processes=N] [--devices_per_process=K] [--port=P] WORKDIR [CONFIG_ARG] [--config.x=y ...]
#   launch/multiprocess.sh /tmp/mp                                    # 2 processes x 4 CPU devices, the demo config
#   launch/multiprocess.sh --num_processes=4 --devices_per_process=2 /tmp/mp --config.train.num_steps=100
# Each process i gets GPT_ADS_DISTRIBUTED=1 JAX_COORDINATOR_ADDRESS=127.0.0.1:P JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i,
# JAX_PLATFORMS=cpu and JAX_NUM_CPU_DEVICES=K (K CPU devices per process; overrides XLA_FLAGS'
# --xla_force_host_platform_device_count). Output: WORKDIR/logs/process_<i>.log. The script waits for all; when one
# fails it stops the others (a worker blocked in a collective would otherwise wait for its dead peer) and exits
# with that process's status.
set -euo pipefail
USAGE="launch/multiprocess.sh [--dry-run] [--num_processes=N (2)] [--devices_per_process=K (4)] [--port=P (a free one)] WORKDIR [CONFIG_ARG] [--config.x=y ...]"
. "$(dirname "$0")/_lib.sh"

dry=0 num=2 devices=4 port=""
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --num_processes=*) num=${1#*=} ;;
    --devices_per_process=*) devices=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    -h|--help) echo "usage: $USAGE"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
parse_run_args "$@"
is_uint "$num" && ((num >= 1)) || die "--num_processes must be a positive integer, got '$num'"
is_uint "$devices" && ((devices >= 1)) || die "--devices_per_process must be a positive integer, got '$devices'"
if [[ -z "$port" ]]; then
  py=$(command -v python3 || command -v python) || die "python3 not found (needed to choose a free port; or pass --port)"
  port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
is_uint "$port" && ((port >= 1 && port <= 65535)) || die "--port must be a TCP port, got '$port'"

root="$(cd "$(dirname "$0")/.." && pwd)"
logdir="${WORKDIR%/}/logs"
train=(gpt-ads-train "--config=${root}/configs/default.py${CONFIG_SUFFIX}" "--workdir=${WORKDIR}" "${TRAIN_FLAGS[@]}")
envs=(JAX_PLATFORMS=cpu "JAX_NUM_CPU_DEVICES=${devices}" GPT_ADS_DISTRIBUTED=1
      "JAX_COORDINATOR_ADDRESS=127.0.0.1:${port}" "JAX_NUM_PROCESSES=${num}")

if [[ $dry == 1 ]]; then
  echo "mkdir -p $(qjoin "$logdir")"
  for ((i = 0; i < num; i++)); do
    echo "env $(qjoin "${envs[@]}" "JAX_PROCESS_ID=$i" "${train[@]}") > $(qjoin "$logdir/process_$i.log") 2>&1 &"
  done
  echo "wait  # for all ${num}; if one exits non-zero, the others are stopped (TERM, then KILL after 10 s)"
  exit 0
fi

command -v gpt-ads-train >/dev/null || die "gpt-ads-train is not on PATH (activate the venv: . .venv/bin/activate)"
mkdir -p "$logdir"
pids=()
stop_all() {  # TERM the processes still running, KILL what is left after 10 s
  local pid alive=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
  ((${#alive[@]})) || return 0
  kill -TERM "${alive[@]}" 2>/dev/null || true
  for _ in $(seq 20); do
    local left=()
    for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    ((${#left[@]})) || return 0
    sleep 0.5
  done
  kill -KILL "${alive[@]}" 2>/dev/null || true
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((i = 0; i < num; i++)); do
  env "${envs[@]}" "JAX_PROCESS_ID=$i" "${train[@]}" > "$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
echo "started ${num} processes (coordinator 127.0.0.1:${port}, ${devices} CPU devices each); logs: $logdir/process_<i>.log" >&2

# Poll rather than `wait -n`: `wait PID` after a process has exited still returns its own status, for each one.
declare -A running
for ((i = 0; i < num; i++)); do running[$i]=${pids[$i]}; done
while ((${#running[@]})); do
  for i in "${!running[@]}"; do
    pid=${running[$i]}
    kill -0 "$pid" 2>/dev/null && continue
    rc=0; wait "$pid" || rc=$?
    unset "running[$i]"
    if ((rc != 0)); then
      echo "process $i exited with status $rc; stopping the others. Last lines of $logdir/process_$i.log:" >&2
      tail -n 20 "$logdir/process_$i.log" >&2 || true
      stop_all
      wait 2>/dev/null || true
      exit "$rc"
    fi
  done
  ((${#running[@]})) && sleep 0.5
done
echo "all ${num} processes finished" >&2
tail -n 3 "$logdir/process_0.log"

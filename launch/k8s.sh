#!/usr/bin/env bash
# Kubernetes: an Indexed Job (one pod per process) plus a headless Service that gives pod 0 a DNS name.
#   launch/k8s.sh [--dry-run] --image=IMAGE [--replicas=N (2)] [--gpus_per_pod=G (0)] [--name=NAME (gpt-ads)]
#                 [--namespace=NS] [--port=P (8476)] [--repo_dir=DIR (/app)] [--pvc=CLAIM] [--mount_path=DIR (/mnt/shared)]
#                 WORKDIR [CONFIG_ARG] [--config.x=y ...]
#   launch/k8s.sh --image=ghcr.io/me/gpt-ads:v1 --replicas=4 --gpus_per_pod=8 --pvc=runs /mnt/shared/run1 run=long
# The image holds the repo at --repo_dir with the package installed (gpt-ads-train on PATH). WORKDIR must be a
# directory all pods share: --pvc mounts a ReadWriteMany PersistentVolumeClaim at --mount_path.
# Pod i gets JAX_PROCESS_ID=i from its completion index (downward API), JAX_NUM_PROCESSES=N and
# JAX_COORDINATOR_ADDRESS=NAME-0.NAME:P: Indexed Job pods are named NAME-<index> and, with subdomain NAME, resolve
# through the headless Service NAME (publishNotReadyAddresses: pod 0 resolves before it is Ready).
# backoffLimit 0: when one pod fails the Job fails and Kubernetes stops the other pods. To run again (it resumes from
# the latest checkpoint in WORKDIR): kubectl delete job NAME, then this script again.
set -euo pipefail
USAGE="launch/k8s.sh [--dry-run] --image=IMAGE [--replicas=N (2)] [--gpus_per_pod=G (0)] [--name=NAME (gpt-ads)] [--namespace=NS] [--port=P (8476)] [--repo_dir=DIR (/app)] [--pvc=CLAIM] [--mount_path=DIR (/mnt/shared)] WORKDIR [CONFIG_ARG] [--config.x=y ...]"
. "$(dirname "$0")/_lib.sh"

dry=0 image="" replicas=2 gpus=0 name="gpt-ads" namespace="" port=8476 repo_dir="/app" pvc="" mount_path="/mnt/shared"
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --image=*) image=${1#*=} ;;
    --replicas=*) replicas=${1#*=} ;;
    --gpus_per_pod=*) gpus=${1#*=} ;;
    --name=*) name=${1#*=} ;;
    --namespace=*) namespace=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --repo_dir=*) repo_dir=${1#*=} ;;
    --pvc=*) pvc=${1#*=} ;;
    --mount_path=*) mount_path=${1#*=} ;;
    -h|--help) echo "usage: $USAGE"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
[[ -n "$image" ]] || die "--image=IMAGE is required"
is_uint "$replicas" && ((replicas >= 1)) || die "--replicas must be a positive integer, got '$replicas'"
is_uint "$gpus" || die "--gpus_per_pod must be a non-negative integer, got '$gpus'"
is_uint "$port" && ((port >= 1 && port <= 65535)) || die "--port must be a TCP port, got '$port'"
# Pod hostnames are NAME-<index>, a DNS label (lowercase alphanumerics and '-', at most 63 characters).
[[ "$name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] && ((${#name} + 1 + ${#replicas} <= 63)) \
  || die "--name must be a DNS label (lowercase letters, digits, '-'; short enough for NAME-<index>), got '$name'"
[[ -z "$namespace" || "$namespace" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "bad --namespace '$namespace'"
[[ -z "$pvc" || "$pvc" =~ ^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$ ]] || die "bad --pvc '$pvc'"
parse_run_args "$@"

ns_line=""
[[ -n "$namespace" ]] && ns_line="
  namespace: $namespace"
args=("--config=configs/default.py${CONFIG_SUFFIX}" "--workdir=${WORKDIR}" "${TRAIN_FLAGS[@]}")
args_yaml=""
for a in "${args[@]}"; do args_yaml+="
        - $(yq "$a")"; done
resources=""
((gpus > 0)) && resources="
        resources:
          limits:
            nvidia.com/gpu: $gpus"
mounts="" volumes=""
if [[ -n "$pvc" ]]; then
  mounts="
        volumeMounts:
        - name: shared
          mountPath: $(yq "$mount_path")"
  volumes="
      volumes:
      - name: shared
        persistentVolumeClaim:
          claimName: $pvc"
fi

manifest="apiVersion: v1
kind: Service
metadata:
  name: $name$ns_line
spec:
  clusterIP: None  # headless: a DNS record per pod, NAME-<index>.NAME
  publishNotReadyAddresses: true
  selector:
    job-name: $name
---
apiVersion: batch/v1
kind: Job
metadata:
  name: $name$ns_line
spec:
  completionMode: Indexed
  completions: $replicas
  parallelism: $replicas
  backoffLimit: 0
  template:
    spec:
      subdomain: $name
      restartPolicy: Never
      containers:
      - name: train
        image: $(yq "$image")
        workingDir: $(yq "$repo_dir")
        command: [\"gpt-ads-train\"]
        args:$args_yaml
        env:
        - name: GPT_ADS_DISTRIBUTED
          value: \"1\"
        - name: JAX_PROCESS_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
        - name: JAX_NUM_PROCESSES
          value: \"$replicas\"
        - name: JAX_COORDINATOR_ADDRESS
          value: \"$name-0.$name:$port\"
        ports:
        - containerPort: $port$resources$mounts$volumes"

if [[ $dry == 1 ]]; then
  echo "kubectl apply -f - <<'GPT_ADS_EOF'"
  echo "$manifest"
  echo "GPT_ADS_EOF"
  exit 0
fi
command -v kubectl >/dev/null || die "kubectl is not on PATH"
printf '%s\n' "$manifest" | kubectl apply -f -

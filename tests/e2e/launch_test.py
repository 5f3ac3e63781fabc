"""launch/*.sh: each --dry-run prints the commands it would run (quoted so a shell reads back the same words),
with nothing else needed on PATH; launch/multiprocess.sh stops every process when one fails."""

import os
import re
import shlex
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["--config.train.batch_size=128", "--config.data.dir=/data/my ads", "--config.x=it's \"q\" $HOME"]
# Dry runs must not need gcloud / kubectl / sbatch / srun / gpt-ads-train: a PATH without them.
DRY_PATH = os.pathsep.join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p))


def dry_run(script, *args, path=DRY_PATH):
  proc = subprocess.run(["bash", f"launch/{script}.sh", "--dry-run", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=30, env={**os.environ, "PATH": path})
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def heredoc(text):
  m = re.search(r"<<'GPT_ADS_EOF'\n(.*?)\nGPT_ADS_EOF\n", text, flags=re.S)
  assert m, text
  return m.group(1)


def test_multiprocess_dry_run(tmp_path):
  wd = str(tmp_path / "w d")
  out = dry_run("multiprocess", "--num_processes=3", "--devices_per_process=2", "--port=12345", wd, "long",
                *OVERRIDES)
  assert not os.path.exists(wd)  # a dry run creates nothing
  lines = [line for line in out.splitlines() if line.startswith("env ")]
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert line.endswith(" 2>&1 &")
    words = shlex.split(line[:-len(" 2>&1 &")])
    assert words[-2:] == [">", f"{wd}/logs/process_{i}.log"]
    assert {"JAX_PLATFORMS=cpu", "JAX_NUM_CPU_DEVICES=2", "GPT_ADS_DISTRIBUTED=1", "JAX_NUM_PROCESSES=3",
            "JAX_COORDINATOR_ADDRESS=127.0.0.1:12345", f"JAX_PROCESS_ID={i}"} <= set(words)
    cmd = words[words.index("gpt-ads-train"):-2]
    assert cmd == ["gpt-ads-train", f"--config={ROOT}/configs/default.py:long", f"--workdir={wd}", *OVERRIDES]


def test_multiprocess_dry_run_picks_a_port_by_default(tmp_path):
  out = dry_run("multiprocess", str(tmp_path), path=os.path.dirname(sys.executable) + os.pathsep + DRY_PATH)
  ports = set(re.findall(r"JAX_COORDINATOR_ADDRESS=127\.0\.0\.1:(\d+)", out))
  assert len(ports) == 1 and 0 < int(ports.pop()) < 65536
  assert out.count("gpt-ads-train") == 2 and "JAX_NUM_CPU_DEVICES=4" in out
  assert f"--config={ROOT}/configs/default.py --workdir={tmp_path}" in out  # no CONFIG_ARG: no ':'


def test_tpu_pod_dry_run():
  out = dry_run("tpu_pod", "--tpu=my-pod", "--zone=us-central2-b", "--project=proj", "--setup",
                "/mnt/shared/run 1", "size=large,run=long", *OVERRIDES)
  setup, run = [shlex.split(line) for line in out.splitlines()]
  for words in (setup, run):
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
    assert {"--zone=us-central2-b", "--project=proj", "--worker=all"} <= set(words)
  assert "pip install -c constraints.txt -e ." in setup[-1] and "jax[tpu]" in setup[-1]
  assert run[-1].startswith("--command=cd ~/gpt_ads && . .venv/bin/activate && GPT_ADS_DISTRIBUTED=1 gpt-ads-train ")
  remote = shlex.split(run[-1][len("--command="):])  # what the shell on each worker runs
  i = remote.index("gpt-ads-train")
  assert remote[i:] == ["gpt-ads-train", "--config=configs/default.py:size=large,run=long",
                        "--workdir=/mnt/shared/run 1", *OVERRIDES]


def test_tpu_pod_requires_tpu_and_zone():
  proc = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry-run", "--zone=z", "/w"], cwd=ROOT,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2 and "--tpu=NAME is required" in proc.stderr and "usage:" in proc.stderr


def test_slurm_dry_run(tmp_path):
  wd = str(tmp_path / "run")
  out = dry_run("slurm", "--nodes=2", "--gpus_per_node=4", "--partition=gpu", "--time=01:30:00",
                "--cpus_per_task=6", wd, "run=long", *OVERRIDES)
  assert not os.path.exists(wd)
  lines = out.splitlines()
  assert lines[0] == f"mkdir -p {wd}/logs" and lines[-1] == f"sbatch {wd}/logs/gpt_ads.sbatch"
  script = heredoc(out)
  for directive in ("--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--partition=gpu", "--time=01:30:00",
                    "--cpus-per-task=6", f"--output={wd}/logs/slurm_%j.out"):
    assert f"#SBATCH {directive}\n" in script
  assert "export GPT_ADS_DISTRIBUTED=1\n" in script
  assert "--gpus-per-task" not in script  # each task must see all GPUs of its node (see launch/slurm.sh)
  [srun] = [shlex.split(line) for line in script.splitlines() if line.startswith("srun ")]
  assert "--kill-on-bad-exit=1" in srun and "--cpus-per-task=6" in srun
  i = srun.index("gpt-ads-train")
  assert srun[i:] == ["gpt-ads-train", f"--config={ROOT}/configs/default.py:run=long", f"--workdir={wd}",
                      *OVERRIDES]


def test_slurm_dry_run_makes_workdir_absolute():
  script = heredoc(dry_run("slurm", "rel/dir"))
  assert f"--workdir={ROOT}/rel/dir" in script and "--nodes=1" in script and "--gres=gpu:8" in script


def test_k8s_dry_run():
  yaml = pytest.importorskip("yaml")
  out = dry_run("k8s", "--image=ghcr.io/me/gpt-ads:v1", "--replicas=4", "--gpus_per_pod=8", "--name=ads-run",
                "--namespace=ml", "--port=9000", "--pvc=runs", "/mnt/shared/run 1", "run=long", *OVERRIDES)
  assert out.startswith("kubectl apply -f - <<'GPT_ADS_EOF'\n")
  service, job = yaml.safe_load_all(heredoc(out))
  assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
  assert service["metadata"] == {"name": "ads-run", "namespace": "ml"}
  assert service["spec"]["selector"] == {"job-name": "ads-run"}
  assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
  spec = job["spec"]
  assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
  assert spec["backoffLimit"] == 0
  pod = spec["template"]["spec"]
  assert pod["subdomain"] == "ads-run" and pod["restartPolicy"] == "Never"
  [c] = pod["containers"]
  assert c["image"] == "ghcr.io/me/gpt-ads:v1" and c["command"] == ["gpt-ads-train"]
  assert c["args"] == ["--config=configs/default.py:run=long", "--workdir=/mnt/shared/run 1", *OVERRIDES]
  env = {e["name"]: e for e in c["env"]}
  assert env["GPT_ADS_DISTRIBUTED"]["value"] == "1" and env["JAX_NUM_PROCESSES"]["value"] == "4"
  assert env["JAX_COORDINATOR_ADDRESS"]["value"] == "ads-run-0.ads-run:9000"
  assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
  assert c["volumeMounts"] == [{"name": "shared", "mountPath": "/mnt/shared"}]
  assert pod["volumes"] == [{"name": "shared", "persistentVolumeClaim": {"claimName": "runs"}}]


def test_k8s_rejects_bad_name():
  proc = subprocess.run(["bash", "launch/k8s.sh", "--dry-run", "--image=i", "--name=Bad_Name", "/w"], cwd=ROOT,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2 and "--name must be a DNS label" in proc.stderr


@pytest.mark.parametrize("script", ["multiprocess", "tpu_pod", "slurm", "k8s"])
def test_unknown_option_is_an_error(script):
  proc = subprocess.run(["bash", f"launch/{script}.sh", "--dry-run", "--no-such-option", "/w"], cwd=ROOT,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2 and "unknown option --no-such-option" in proc.stderr and "usage:" in proc.stderr


STUB = """#!/usr/bin/env bash
echo "pid=$$ id=$JAX_PROCESS_ID n=$JAX_NUM_PROCESSES coord=$JAX_COORDINATOR_ADDRESS args=$*"
if [[ "$JAX_PROCESS_ID" == "$FAIL_ID" ]]; then sleep 0.5; exit 7; fi
exec sleep "${SLEEP:-60}"
"""


def run_with_stub(tmp_path, fail_id, sleep="60", num=3):
  """launch/multiprocess.sh with a stub gpt-ads-train on PATH: process FAIL_ID exits 7, the others sleep."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gpt-ads-train").write_text(STUB)
  (bin_dir / "gpt-ads-train").chmod(0o755)
  wd = tmp_path / "wd"
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAIL_ID": fail_id, "SLEEP": sleep}
  start = time.monotonic()
  proc = subprocess.run(["bash", "launch/multiprocess.sh", f"--num_processes={num}", str(wd), "--config.x=a b"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  logs = [(wd / "logs" / f"process_{i}.log").read_text() for i in range(num)]
  return proc, logs, time.monotonic() - start


def test_multiprocess_stops_the_others_when_one_fails(tmp_path):
  proc, logs, seconds = run_with_stub(tmp_path, fail_id="1")
  assert proc.returncode == 7, proc.stderr
  assert seconds < 20  # the sleepers (60 s) were stopped, not waited for
  assert "process 1 exited with status 7" in proc.stderr
  for i, log in enumerate(logs):
    assert f"id={i} n=3 coord=127.0.0.1:" in log and log.rstrip().endswith("args=--config=" + ROOT +
                                                                          "/configs/default.py --workdir=" +
                                                                          str(tmp_path / "wd") + " --config.x=a b")
  for i in (0, 2):
    pid = int(re.search(r"pid=(\d+)", logs[i]).group(1))
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_multiprocess_succeeds_when_all_succeed(tmp_path):
  proc, logs, _ = run_with_stub(tmp_path, fail_id="none", sleep="0.2", num=2)
  assert proc.returncode == 0, proc.stderr
  assert "all 2 processes finished" in proc.stderr and "id=0" in proc.stdout


def test_multiprocess_real_processes_fail_fast_on_a_bad_flag(tmp_path):
  """Real gpt-ads-train processes (no training): a bad override fails both; the launcher exits non-zero."""
  env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  proc = subprocess.run(["bash", "launch/multiprocess.sh", "--devices_per_process=1", str(tmp_path),
                         "--config.no_such_key=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0
  assert "no_such_key" in proc.stderr  # the failed process's log tail
  assert (tmp_path / "logs" / "process_0.log").exists() and (tmp_path / "logs" / "process_1.log").exists()

"""Multi-process training on JAX's own runtime (2 processes x 4 CPU devices on 127.0.0.1, gloo collectives).

- the same losses as 1 process x 8 devices (the input shards make the global batches identical);
- a checkpoint written by 2 processes resumes in 1 process on another mesh, input position included;
- when one worker dies, the other exits with an error instead of hanging.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import subprocess_env, tiny_flags
from numerics import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = [sys.executable, "-m", "gpt_ads.cli.train"]
# Two input shards whatever the process count, so every layout reads the same global batches.
FLAGS = {"data.num_shards": 2, "train.num_steps": 6}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), **extra)
  env.update({k: v for k, v in subprocess_env().items() if k.startswith("JAX_") and "CACHE" in k})  # compile once
  env["XLA_FLAGS"] = subprocess_env()["XLA_FLAGS"]  # the caller's flags, without a device count
  return env


def _start(workdir, *, devices, overrides, process_id=None, num_processes=None, port=None, flags=()):
  extra = {}
  if num_processes:
    extra = dict(GPT_ADS_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(process_id))
  cmd = TRAIN + tiny_flags(**overrides) + [f"--workdir={workdir}", *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=_env(devices, **extra), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _run_processes(workdir, n, *, overrides, timeout=600):
  port = _free_port()
  procs = [_start(workdir, devices=8 // n, overrides=overrides, process_id=i, num_processes=n if n > 1 else None,
                  port=port) for i in range(n)]
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """6 steps on 1 process x 8 devices and on 2 processes x 4 devices (checkpoints at 3 and 6)."""
  one, two = str(tmp_path_factory.mktemp("one")), str(tmp_path_factory.mktemp("two"))
  _run_processes(one, 1, overrides=FLAGS)
  _run_processes(two, 2, overrides=FLAGS)
  return one, two


def test_two_processes_match_one_process(runs):
  one, two = runs
  a, b = _losses(one), _losses(two)
  assert sorted(a) == sorted(b) == [2, 4, 6]
  for step in a:
    for key in ("train/loss", "train/ad_id/loss", "eval/loss"):
      if key in a[step]:
        assert_close(b[step][key], a[step][key], err_msg=f"{key}@{step}")
  ev_a, ev_b = (json.load(open(os.path.join(d, "eval.json"))) for d in runs)
  assert_close(ev_b["test_loss"], ev_a["test_loss"])
  assert os.path.isdir(os.path.join(two, "checkpoints", "6", "data"))


def test_two_process_checkpoint_resumes_in_one_process_on_another_mesh(runs):
  """Continue both runs to step 8: the 2-process one in 1 process on a data=4 x fsdp=2 mesh."""
  one, two = runs
  _run_processes(one, 1, overrides={**FLAGS, "train.num_steps": 8})
  _run_processes(two, 1, overrides={**FLAGS, "train.num_steps": 8, "mesh.data": 4, "mesh.fsdp": 2})
  a, b = _losses(one), _losses(two)
  assert sorted(b) == [2, 4, 6, 8]
  assert_close(b[8]["train/loss"], a[8]["train/loss"])


def test_a_dead_worker_ends_the_job(tmp_path):
  """kill -9 one of two workers mid-run: the other exits non-zero within 60 s instead of hanging."""
  port = _free_port()
  overrides = {**FLAGS, "train.num_steps": 100000, "train.checkpoint_every": 100000, "train.eval_every": 0}
  procs = [_start(str(tmp_path), devices=4, overrides=overrides, process_id=i, num_processes=2, port=port,
                  flags=["--heartbeat_timeout_seconds=15"])  # the survivor notices the dead peer within ~15 s
           for i in range(2)]
  try:
    deadline = time.time() + 300
    while not os.path.exists(tmp_path / "metrics.jsonl") and time.time() < deadline:  # training has begun
      assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-2000:]
      time.sleep(1)
    assert os.path.exists(tmp_path / "metrics.jsonl")
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
      procs[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
      pytest.fail("the surviving worker was still running 60 s after its peer died")
    assert procs[0].returncode != 0
    print(f"survivor exited {procs[0].returncode} after {time.time() - t0:.1f} s")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.communicate()

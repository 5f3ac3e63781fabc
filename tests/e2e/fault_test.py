"""Fault tolerance of gpt-ads-train: exact resume after kill -9 (also inside an asynchronous checkpoint write),
SIGTERM preemption, damaged checkpoints, non-finite steps, config / workdir checks before any compute."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TRAINED_RUN, subprocess_env, tiny_config, tiny_flags
from gpt_ads import api, config_lib, features
from gpt_ads.data import datasets
from gpt_ads.model import Model, ModelConfig
from gpt_ads.training import checkpoint, optim, preemption, sharding, train, train_state, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------------- kill -9 / SIGTERM / resume

def _start(workdir: str, log: str, **env) -> subprocess.Popen:
  """The trained_run fixture's command (same flags, same process setup), on another workdir."""
  cmd = [sys.executable, "-m", "gpt_ads.cli.train", *tiny_flags(**TRAINED_RUN), f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(**env), stdout=subprocess.DEVNULL,
                          stderr=open(log, "w"))


def _records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def _last_step(workdir: str) -> int:
  return max([r["step"] for r in _records(workdir)], default=0)


def _signal_after(proc: subprocess.Popen, workdir: str, step: int, sig: int, timeout: float = 180) -> None:
  """Sends `sig` as soon as metrics.jsonl holds a record of `step` or later."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f"the run ended (status {proc.returncode}) before step {step}")
    if _last_step(workdir) >= step:
      proc.send_signal(sig)
      return
    time.sleep(0.01)
  proc.kill()
  pytest.fail(f"no step {step} within {timeout}s")


def _flip_newest_checkpoint(workdir: str) -> int:
  """Flips one byte of the biggest array file of the newest checkpoint (orbax reads it back without error)."""
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  files = glob.glob(os.path.join(workdir, "checkpoints", str(steps[-1]), "state", "ocdbt.process_0", "d", "*"))
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(path, "wb").write(bytes(data))
  return steps[-1]


def test_kill_preempt_and_corruption_resume_exactly(trained_run, tmp_path):
  """The trained_run command again, killed 3 times (once step 4 is logged, inside an asynchronous checkpoint
  write, after more steps), preempted once (SIGTERM) and resumed over a corrupted newest checkpoint: every logged
  value (loss, per-feature losses, grad norm, learning rate) is bitwise the uninterrupted run's, and so is the
  test loss."""
  run_dir = str(tmp_path / "run")
  logs = [str(tmp_path / f"run{i}.log") for i in range(5)]

  # 1. kill -9 once step 4 is logged.
  proc = _start(run_dir, logs[0])
  _signal_after(proc, run_dir, 4, signal.SIGKILL)
  assert proc.wait(120) == -signal.SIGKILL

  # 2. kill -9 inside the rerun's first asynchronous checkpoint write (a test hook lands it there).
  proc = _start(run_dir, logs[1], **{checkpoint.KILL_DURING_SAVE_ENV: "1"})
  assert proc.wait(180) == -signal.SIGKILL
  tmp = glob.glob(os.path.join(run_dir, "checkpoints", "*.orbax-checkpoint-tmp*"))
  assert len(tmp) == 1, os.listdir(os.path.join(run_dir, "checkpoints"))
  half_written = os.path.basename(tmp[0]).split(".")[0]
  assert not os.path.exists(os.path.join(run_dir, "checkpoints", half_written))  # never looks complete
  assert f"checkpoint {half_written} saved" not in open(logs[1]).read()  # and is never reported saved

  # 3. SIGTERM after new progress: finishes its step, saves it, exits 0.
  proc = _start(run_dir, logs[2])
  _signal_after(proc, run_dir, _last_step(run_dir) + 2, signal.SIGTERM)
  assert proc.wait(120) == 0, open(logs[2]).read()[-2000:]
  stopped = int(re.search(r"preempted: checkpoint (\d+) saved", open(logs[2]).read())[1])
  assert os.path.exists(os.path.join(run_dir, "checkpoints", str(stopped), "commit_success.txt"))
  assert stopped < TRAINED_RUN["train.num_steps"]

  # 4. kill -9 after more progress.
  proc = _start(run_dir, logs[3])
  _signal_after(proc, run_dir, stopped + 3, signal.SIGKILL)
  assert proc.wait(120) == -signal.SIGKILL

  # 5. damage the newest checkpoint: the rerun reports it, sets it aside, resumes from the one before, finishes.
  damaged = _flip_newest_checkpoint(run_dir)
  proc = _start(run_dir, logs[4])
  assert proc.wait(300) == 0, open(logs[4]).read()[-2000:]
  assert f"checkpoint {damaged} is corrupt" in open(logs[4]).read()
  assert [d.split("-")[0] for d in os.listdir(os.path.join(run_dir, "checkpoints_corrupt"))] == [str(damaged)]

  ref, got = _records(trained_run), _records(run_dir)
  assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(2, 31, 2))  # each step logged once
  for a, b in zip(ref, got):
    a.pop("train/events_per_sec", None), b.pop("train/events_per_sec", None)
    assert a == b, (a, b)  # JSON floats round-trip exactly: equal here = bitwise equal
  evals = [json.load(open(os.path.join(d, "eval.json"))) for d in (trained_run, run_dir)]
  assert evals[0]["test_loss"] == evals[1]["test_loss"]


def test_preemption_grace_period_watchdog(monkeypatch, capsys):
  """A save that outlasts config.train.preemption_grace_seconds ends the process with a non-zero status."""
  exits, previous = [], signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(preemption.os, "_exit", exits.append)
  notice = preemption.Preemption(grace_seconds=0.2)
  try:
    assert not notice.reached(5)
    os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the notice, starts the watchdog
    assert notice.reached(5)
    time.sleep(0.6)
  finally:
    notice.close()
  assert exits == [preemption.EXIT_GRACE_EXCEEDED]
  assert "preemption_grace_seconds=0.2" in capsys.readouterr().err
  assert signal.getsignal(signal.SIGTERM) == previous  # the handler is only there while training


# ------------------------------------------------------------------------------------------------ checkpoints

def _tree(scale: float) -> dict:
  return {"w": jnp.arange(2048, dtype=jnp.float32) * scale, "b": {"c": jnp.ones((16, 16), jnp.bfloat16) * scale,
                                                                   "n": jnp.int32(7)}}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _damage(path: str, how: str) -> None:
  state = os.path.join(path, "state")
  if how == "flip":  # silent: orbax / tensorstore read it back without error; only the checksums notice
    f = max(glob.glob(os.path.join(state, "ocdbt.process_0", "d", "*")), key=os.path.getsize)
    data = bytearray(open(f, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(f, "wb").write(bytes(data))
  elif how == "truncate":
    for f in [os.path.join(state, "_METADATA"), max(glob.glob(os.path.join(state, "ocdbt.process_0", "d", "*")),
                                                      key=os.path.getsize)]:
      open(f, "r+b").truncate(os.path.getsize(f) // 2)
  else:  # a file missing
    os.remove(os.path.join(state, "manifest.ocdbt"))


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, how, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, owner=True)
  for step in (1, 2):
    ckpt.save(step, _tree(step), data_state={"position": step})
  assert ckpt.wait() == 2 and ckpt.saved_step == 2
  ckpt.close()
  _damage(str(tmp_path / "checkpoints" / "2"), how)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, owner=True)
  state, data_state = ckpt.restore(_abstract(_tree(1)))
  ckpt.close()
  assert data_state == {"position": 1}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_tree(1))):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert "checkpoint 2 is corrupt" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # moved out of orbax's way ...
  assert os.listdir(tmp_path / checkpoint.CORRUPT_DIR)[0].startswith("2-")  # ... and kept for inspection


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, owner=True)
  ckpt.save(1, _tree(1))
  ckpt.close()
  _damage(str(tmp_path / "checkpoints" / "1"), "flip")
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, owner=True)
  with pytest.raises(ValueError, match="no checkpoint in .* reads back intact .*step 1: .*checksums"):
    ckpt.restore(_abstract(_tree(1)))
  ckpt.close()


def test_a_state_holding_nan_is_never_saved(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, owner=True)
  tree = _tree(1)
  tree["w"] = tree["w"].at[3].set(jnp.inf)
  with pytest.raises(FloatingPointError, match="step 4: the train state holds NaN/Inf in w"):
    ckpt.save(4, tree)
  ckpt.close()
  assert os.listdir(tmp_path / "checkpoints") == []


# ------------------------------------------------------------------------------------------- non-finite steps

def test_nonfinite_steps_stop_or_skip_and_never_reach_a_checkpoint(tmp_path):
  """From a checkpoint whose parameters are huge (finite), the next loss overflows. on_nonfinite="stop": the run
  stops naming the step and the features, writing nothing; "skip": it goes on with params and optimizer state
  unchanged, and stops after max_nonfinite_skips in a row. (The tiny config of train_test's 8-step run, so the
  compiled step is shared.)"""
  config = tiny_config(**{"train.num_steps": 8, "train.checkpoint_every": 1, "train.log_every": 1,
                          "train.eval_every": 0, "train.keep_checkpoints": 10})
  data = datasets.load(config, str(tmp_path))
  model = Model(data.schema, ModelConfig.from_config(config.model))
  mesh, rule_set = sharding.make_mesh(config.mesh), sharding.rules(config)
  tx, _ = optim.make(config.train)
  abstract, _ = train_state.abstract_and_shardings(model, tx, mesh, rule_set)
  state = train_state.TrainState(step=np.int32(1),  # built on the host: nothing to compile
                                 params=jax.tree.map(lambda x: np.full(x.shape, 3e38, x.dtype), abstract.params),
                                 opt_state=jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract.opt_state))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=10, owner=True)
  ckpt.save(1, state)
  ckpt.close()

  with pytest.raises(FloatingPointError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("step 2: non-finite train/") and "on_nonfinite=skip" in msg, msg
  assert any(f"train/{f}/loss=nan" in msg for f in ("event_type", "ad_id", "device", "time_gap")), msg
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # nothing saved after it
  assert not os.path.exists(tmp_path / "metrics.jsonl") or not open(tmp_path / "metrics.jsonl").read()

  config.train.on_nonfinite, config.train.max_nonfinite_skips = "skip", 2
  with pytest.raises(FloatingPointError, match=r"step 4: non-finite .*3 steps in a row .*max_nonfinite_skips=2"):
    train.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=10)
  with jax.set_mesh(mesh):
    first, _ = ckpt.restore(abstract, 1)
    skipped, _ = ckpt.restore(abstract, 3)  # saved after two skipped steps
  ckpt.close()
  assert int(skipped.step) == 3
  for a, b in zip(jax.tree.leaves((first.params, first.opt_state)), jax.tree.leaves((skipped.params,
                                                                                     skipped.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the skipped updates changed nothing
  assert not os.path.exists(tmp_path / "metrics.jsonl") or not open(tmp_path / "metrics.jsonl").read()  # no
  # record of a skipped step (its losses are NaN)


# ----------------------------------------------------------------------------- config, data and workdir checks

def test_unknown_config_keys_are_named_with_a_suggestion():
  config = tiny_config()
  config.train.unlock()
  config.train.chekpoint_every = 5
  with pytest.raises(ValueError, match=r"config.train.chekpoint_every \(did you mean config.train.checkpoint_every"):
    config_lib.validate(config)


@pytest.mark.parametrize("overrides, message", [
    ({"mesh.data": 3}, "has 3 devices but 8 are available"),
    ({"mesh.data": 8, "train.batch_size": 12}, "batch_size=12 .* must be divisible by the 8-way data parallelism"),
    ({"model.max_len": 1}, "max_len=1 must be >= 2"),
    ({"schema.features.ad_id.copy_lags": 16}, "max_len=16 is too small for .*ad_id.copy_lags=16"),
    ({"train.on_nonfinite": "ignore"}, "on_nonfinite='ignore' must be one of"),
    ({"train.preemption_grace_seconds": 0.0}, "preemption_grace_seconds=0.0 must be > 0"),
])
def test_bad_config_fails_before_any_compute(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert not (tmp_path / "generated_data").exists()  # nothing generated, compiled or written


def test_resuming_with_another_schema_or_model_is_refused(tmp_path):
  config = tiny_config()
  schema = features.Schema.from_config(config.schema.features)
  api.save_run_file(str(tmp_path), schema, config, str(tmp_path / "generated_data"))
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"ad_id.vocab_size 302 \(checkpoint\) vs 303 \(now\)"):
    train.train_and_evaluate(tiny_config(**{"data.synthetic.num_ads": 301}), str(tmp_path))
  other = tiny_config(**{"model.d_model": 32})
  with pytest.raises(ValueError, match=r"model.d_model 24 \(checkpoint\) vs 32 \(now\).*use a new --workdir"):
    workdir.check_resumable(str(tmp_path), features.Schema.from_config(other.schema.features), other)
  # another prepared data set with the same sizes but other vocabulary values
  for name, values in (("old", ["a", "b"]), ("new", ["b", "a"])):
    (tmp_path / name).mkdir()
    json.dump({"features": [{"name": f.name, "vocabulary": {"kind": "values", "values": values}} for f in schema]},
              open(tmp_path / name / "schema.json", "w"))
  api.save_run_file(str(tmp_path), schema, config, str(tmp_path / "old"))
  with pytest.raises(ValueError, match="the vocabulary of event_type in .*new differs from the run's data set"):
    workdir.check_resumable(str(tmp_path), schema, config, str(tmp_path / "new"))


def test_unwritable_or_full_workdir_fails_at_start(tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="is not writable .*choose another directory"):
    train.train_and_evaluate(tiny_config(), str(blocker / "run"))
  free = lambda path: type("Usage", (), {"free": 1 << 20})()  # noqa: E731 - 1 MiB left
  monkeypatch.setattr(workdir.shutil, "disk_usage", free)
  with pytest.raises(ValueError, match=r"has 1.0 MiB free but its checkpoints need about .* MiB more"):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "model.json").exists()


def test_cli_unknown_override_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "gpt_ads.cli.train", "--config=configs/default.py:nano",
                         f"--workdir={tmp_path}", "--config.train.chekpoint_every=5"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=subprocess_env())
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines == ["gpt-ads-train: error: --config.train.chekpoint_every: unknown config key 'chekpoint_every'; "
                   "did you mean 'checkpoint_every'?"], proc.stderr

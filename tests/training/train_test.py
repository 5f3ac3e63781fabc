"""The train step and the loop end to end: compiles once, learns, logs, checkpoints and resumes exactly."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import subprocess_env, tiny_config
from gpt_ads import features
from gpt_ads.data import datasets, pipeline
from gpt_ads.model import Model, ModelConfig
from gpt_ads.training import checkpoint, optim, sharding, steps, train, train_state
from numerics import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _batches(data, config, n):
  """The first n local training batches of `data`."""
  it = pipeline.TrainIterator(data.train, names=data.schema.names, max_len=config.model.max_len,
                              global_batch=config.train.batch_size, seed=0)
  return [next(it) for _ in range(n)]


def test_train_step_compiles_once_and_accumulates(tmp_path):
  """Three steps compile once, whatever the batch contents; on the same global batches 2 micro-batches give the
  losses, gradient norms and parameters of 1 (each feature's NLL summed over the micro-batches and divided by
  the step's targets). Every feature an exact softmax here, so no micro-batch draws negatives of its own, and
  the tiny config has no dropout: the two differ only in the order of float32 sums."""
  config = tiny_config(**{"schema.features.ad_id.loss": "softmax", "schema.features.ad_id.copy_lags": 0})
  data = datasets.load(config, str(tmp_path))
  model = Model(data.schema, ModelConfig.from_config(config.model))
  mesh, rule_set = sharding.make_mesh(config.mesh), sharding.rules(config)
  tx, lr = optim.make(config.train)
  _, shardings = train_state.abstract_and_shardings(model, tx, mesh, rule_set)
  ds = _batches(data, config, 3)
  dsh = sharding.batch_sharding(mesh, rule_set)
  metrics, params = {}, {}
  for accum in (1, 2):
    step = steps.jit_train_step(model=model, tx=tx, lr_schedule=lr, unigram_log_q={}, rule_set=rule_set,
                                grad_accum_steps=accum, state_shardings=shardings, data_sharding=dsh)
    with jax.set_mesh(mesh):
      state = train_state.create(jax.random.key(0), model, tx, shardings)
      metrics[accum] = []
      for i in range(3):
        state, m = step(state, pipeline.to_global(ds[i], dsh), jax.random.key(1))
        metrics[accum].append(jax.device_get({k: v for k, v in m.items() if k.startswith("train/")}))
    assert step._cache_size() == 1  # one trace, one compile, whatever the batch contents
    assert int(state.step) == 3
    params[accum] = jax.device_get(state.params)
  for i, (one, two) in enumerate(zip(metrics[1], metrics[2])):
    assert one.keys() == two.keys()
    for k in one:
      assert_close(two[k], one[k], err_msg=f"{k} at step {i + 1}")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params[1]), jax.tree.leaves(params[2])):
    # AdamW's first steps divide each gradient entry by its own size, so an entry that is ~0 by cancellation
    # turns sum-order noise into an update of up to lr: 1e-5 of the largest parameter (measured 4e-7).
    assert_close(b, a, scale_tol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A tiny run of 8 steps (checkpoints at 3 and 6, then 8)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(**{"train.num_steps": 8})
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_eval_json_and_metrics_jsonl_fields(finished_run):
  _, workdir, result = finished_run
  with open(os.path.join(workdir, "eval.json")) as f:
    ev = json.load(f)
  assert ev == json.loads(json.dumps(result))
  for key in ("test_loss", "test_loss_per_feature", "non_embedding_params", "params", "train_flops",
              "events_per_sec", "bayes_factorized_loss", "bayes_joint_loss", "unigram_loss", "gap_closed"):
    assert key in ev, key
  assert set(ev["test_loss_per_feature"]) == {"event_type", "ad_id", "device", "time_gap"}
  np.testing.assert_allclose(sum(ev["test_loss_per_feature"].values()), ev["test_loss"], rtol=1e-9)
  assert ev["bayes_joint_loss"] <= ev["bayes_factorized_loss"] < ev["unigram_loss"]
  np.testing.assert_allclose(ev["gap_closed"], (ev["unigram_loss"] - ev["test_loss"]) /
                             (ev["unigram_loss"] - ev["bayes_factorized_loss"]))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [2, 4, 6, 8]
  for r in records:
    for key in ("train/loss", "train/ad_id/loss", "train/event_type/loss", "train/learning_rate",
                "train/grad_norm"):
      assert np.isfinite(r[key]), key
  assert all("train/events_per_sec" in r for r in records[1:])
  assert "eval/loss" in records[1]  # eval_every = 4
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_continues_exactly(finished_run, tmp_path):
  """Drop the checkpoints after step 3, rerun the same command: same metrics and the same test loss."""
  config, workdir, result = finished_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  for step in ("6", "8"):
    shutil.rmtree(os.path.join(resumed, "checkpoints", step))
  os.remove(os.path.join(resumed, "eval.json"))
  again = train.train_and_evaluate(config, resumed)
  assert again["test_loss"] == result["test_loss"]
  read = lambda d: [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
  a, b = read(workdir), read(resumed)
  assert [r["step"] for r in b] == [2, 4, 6, 8]
  for ra, rb in zip(a, b):
    assert ra["train/loss"] == rb["train/loss"] and ra.get("eval/loss") == rb.get("eval/loss")


def test_checkpoint_restores_onto_another_mesh(finished_run):
  config, workdir, _ = finished_run
  schema = features.Schema.from_config(config.schema.features)
  model = Model(schema, ModelConfig.from_config(config.model))
  tx, _ = optim.make(config.train)
  restored = []
  for sizes in (dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=4, tensor=1)):
    config.mesh.update(sizes)
    mesh = sharding.make_mesh(config.mesh)
    abstract, shardings = train_state.abstract_and_shardings(model, tx, mesh, sharding.rules(config))
    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    with jax.set_mesh(mesh):
      state, _ = ckpt.restore(abstract)
    ckpt.close()
    assert int(state.step) == 8
    assert jax.tree.leaves(state.params)[0].sharding == jax.tree.leaves(shardings.params)[0]
    restored.append(jax.device_get(state))
  for a, b in zip(jax.tree.leaves(restored[0]), jax.tree.leaves(restored[1])):
    np.testing.assert_array_equal(a, b)


def test_loss_falls_on_generated_data(tmp_path):
  config = tiny_config(**{"train.num_steps": 60, "train.learning_rate": 3e-3, "train.log_every": 10,
                          "train.eval_every": 0, "train.checkpoint_every": 1000})
  result = train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert records[-1]["train/loss"] < records[0]["train/loss"] - 0.5
  assert result["test_loss"] < result["unigram_loss"]
  assert result["gap_closed"] > 0.2


def test_cli_rejects_bad_config_with_one_line(tmp_path):
  cmd = [sys.executable, "-m", "gpt_ads.cli.train", "--config=configs/default.py:nano", f"--workdir={tmp_path}",
         "--config.model.combine=product"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=subprocess_env())
  assert proc.returncode != 0
  errors = [line for line in proc.stderr.splitlines() if line.startswith("gpt-ads-train: error:")]
  assert len(errors) == 1 and "combine='product'" in errors[0]
  assert "Traceback" not in proc.stderr

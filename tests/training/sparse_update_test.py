"""Row-sparse ("lazy") AdamW (gpt_ads.training.sparse_update): the rows a step reads get AdamW by hand, the rest of the
state stays bitwise; loss and gradients are the dense step's; a run with it trains and resumes exactly."""

import functools
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from conftest import tiny_config
from gpt_ads import config_lib, features
from gpt_ads.model import Model, ModelConfig
from gpt_ads.model.heads import id_param_paths
from gpt_ads.objective import objective
from gpt_ads.training import optim, sharding, sparse_update, steps, train, train_state
from numerics import assert_close

SPARSE = 100  # sparse_update_min_vocab: ad_id (302 ids) is row-sparse, the softmax features never are


def _setup(config):
  mesh, rule_set = sharding.make_mesh(config.mesh), sharding.rules(config)
  model = Model(features.Schema.from_config(config.schema.features), ModelConfig.from_config(config.model))
  tx, lr = optim.make(config.train)
  _, shardings = train_state.abstract_and_shardings(model, tx, mesh, rule_set)
  return mesh, rule_set, model, tx, lr, shardings


def _batch(schema, seed: int, b: int = 16, t: int = 16) -> dict[str, jax.Array]:
  """Rows packed with two users each and padding after them (segment 0, PAD ids)."""
  rng = np.random.default_rng(seed)
  seg, pos = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
  for r in range(b):
    first, second = rng.integers(2, t // 2, 2)
    seg[r, :first], seg[r, first:first + second] = 1, 2
    pos[r, :first], pos[r, first:first + second] = np.arange(first), np.arange(second)
  batch = {f.name: np.where(seg > 0, rng.integers(1, f.vocab_size, (b, t)), 0).astype(np.int32) for f in schema}
  return {**batch, "segment_ids": seg, "positions": pos}


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return np.asarray(tree)


def _dense_gradient(model, params, batch, rng):
  """The reference: jax.grad of the loss w.r.t. the full params, with the step's negatives (steps.step_gradients'
  rng convention, k = 1) -> (gradient, {name: Negatives})."""
  drop_rng, neg_rng = jax.random.split(rng)
  negs = objective.draw_negatives(batch, neg_rng, schema=model.schema, unigram_log_q={})

  def loss(p):
    outputs, _ = model.apply({"params": p}, batch, deterministic=False, rngs={"dropout": drop_rng})
    return objective.training_loss(p, outputs, batch, negs, schema=model.schema)[0]

  return jax.jit(jax.grad(loss))(params), negs


def test_step_is_lazy_adamw_on_the_rows_read():
  """Two sparse steps; the second one checked against AdamW by hand on the rows it reads (from the first step's
  state, so the moments are not zero), and bitwise unchanged everywhere else in the per-id parameters. On a
  data x fsdp x tensor mesh, so the gathers and scatters run on a table sharded both ways (a data-only mesh is
  the easier case of the same code; it was checked once and dropped to keep the suite's time)."""
  config = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  mesh, rule_set, model, tx, lr, shardings = _setup(config)
  step = steps.jit_train_step(model=model, tx=tx, lr_schedule=lr, unigram_log_q={}, rule_set=rule_set,
                              grad_accum_steps=1, state_shardings=shardings,
                              data_sharding=sharding.batch_sharding(mesh, rule_set), sparse_min_vocab=SPARSE)
  batches = [_batch(model.schema, seed) for seed in (0, 1)]
  with jax.set_mesh(mesh):
    state = train_state.create(jax.random.key(0), model, tx, shardings)
    state, _ = step(state, batches[0], jax.random.key(1))
    before = jax.device_get(state)  # the state is donated to the next step
    state, _ = step(state, batches[1], jax.random.key(1))
  after = jax.device_get(state)

  g, negs = _dense_gradient(model, before.params, batches[1], jax.random.fold_in(jax.random.key(1), 1))
  norm = float(optax.global_norm(g))
  scale = min(1.0, config.train.grad_clip / norm)
  t, b1, b2 = 2, config.train.b1, config.train.b2
  spec = model.schema["ad_id"]
  read = np.unique(np.concatenate([[0], batches[1]["ad_id"].ravel(), np.asarray(negs["ad_id"].ids)]))
  moments = [optax.tree_utils.tree_get(s.opt_state, "mu") for s in (before, after)]
  moments += [optax.tree_utils.tree_get(s.opt_state, "nu") for s in (before, after)]
  for path in id_param_paths(spec):
    p0, m0, v0 = _get(before.params, path), _get(moments[0], path), _get(moments[2], path)
    gg = _get(g, path).astype(np.float64) * scale
    m = b1 * m0 + (1 - b1) * gg
    v = b2 * v0 + (1 - b2) * gg ** 2
    p = p0 - float(lr(1)) * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
    got = {"param": _get(after.params, path), "mu": _get(moments[1], path), "nu": _get(moments[3], path)}
    # The reference gradient is another sum (jax.grad of the whole table; the step differentiates the gathered
    # rows, on a 2x2x2 mesh): entries agree to ~1e-6 of the largest (measured 4e-7 for mu, 1e-6 for the bias
    # param, on AVX-512 and AVX2 alike), however small the entry; 1e-5 of the scale leaves a 10x margin.
    assert_close(got["param"][read], p[read], scale_tol=1e-5, err_msg=str(path))
    assert_close(got["mu"][read], m[read], scale_tol=1e-5, err_msg=str(path))
    assert_close(got["nu"][read], v[read], scale_tol=1e-5, err_msg=str(path))
    rest = np.ones(p0.shape[0], bool)
    rest[read] = False
    assert np.any(m0[rest] != 0), "no row with momentum outside the rows read: dense AdamW would pass too"
    for name, before_arr in (("param", p0), ("mu", m0), ("nu", v0)):
      np.testing.assert_array_equal(got[name][rest], before_arr[rest], err_msg=f"{path} {name}")


@pytest.mark.parametrize("accum,tied,factorization", [(2, False, "independent"), (1, True, "chain")])
def test_loss_and_gradients_match_the_dense_step(accum, tied, factorization):
  """Same negatives, same loss; the gradients of every other parameter bitwise equal, and the slab rows' the
  dense gradient's rows (which is zero off the rows read). Untied with 2 micro-batches: the most per-id
  parameters and negative sets; the tied, 1-micro-batch step is the one the AdamW-by-hand test checks. Under
  the chain factorization the input table is also read at the next event's ids (the teacher-forced values)."""
  config = tiny_config(**{"schema.features.ad_id.tied": tied, "model.event_factorization": factorization,
                          "model.event_order": "device,ad_id"})
  mesh, rule_set, model, tx, _, shardings = _setup(config)
  batch = _batch(model.schema, 0)
  with jax.set_mesh(mesh):
    params = train_state.create(jax.random.key(0), model, tx, shardings).params
    out = {}
    for m in (0, SPARSE):
      fn = functools.partial(steps.step_gradients, model=model, unigram_log_q={}, rule_set=rule_set,
                             grad_accum_steps=accum, sparse_min_vocab=m)
      out[m] = jax.device_get(jax.jit(lambda p, b: (lambda r, lp, g: (r.ids, lp, g))(*fn(p, b, jax.random.key(3))))(
          params, batch))
  (_, (loss_d, pf_d), g_d), (ids, (loss_s, pf_s), g_s) = out[0], out[SPARSE]
  assert loss_s == loss_d and pf_s == pf_d
  u = ids["ad_id"]
  paths = id_param_paths(model.schema["ad_id"])
  assert len(paths) == (2 if tied else 3)
  flat_d = dict(jax.tree_util.tree_leaves_with_path(g_d))
  for key, gs in jax.tree_util.tree_leaves_with_path(g_s):
    path, gd = tuple(k.key for k in key), flat_d[key]
    if path not in paths:
      np.testing.assert_array_equal(gs, gd, err_msg=str(path))
      continue
    v = gd.shape[0]
    assert gs.shape[0] == len(u)
    real = u < v
    assert_close(gs[real], gd[u[real]], err_msg=str(path))
    assert not np.any(gs[~real]), "free slots must have no gradient"
    rest = np.ones(v, bool)
    rest[u[real]] = False
    assert not np.any(gd[rest]), "the dense gradient is non-zero on a row the sparse step did not read"


def test_run_trains_and_resumes_exactly(tmp_path):
  """train_and_evaluate with row-sparse ad_id updates on an fsdp x tensor mesh (the table sharded both ways):
  the loss falls; dropping the last checkpoint and rerunning gives the same metrics and test loss."""
  config = tiny_config(**{"train.sparse_update_min_vocab": SPARSE, "train.num_steps": 24, "train.log_every": 4,
                          "train.eval_every": 0, "train.checkpoint_every": 12, "train.learning_rate": 3e-3,
                          "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  workdir, resumed = str(tmp_path / "run"), str(tmp_path / "resumed")
  result = train.train_and_evaluate(config, workdir)
  read = lambda d: [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]  # noqa: E731
  records = read(workdir)
  assert records[-1]["train/loss"] < records[0]["train/loss"] - 0.5
  assert result["test_loss"] < result["unigram_loss"]
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "24"))
  os.remove(os.path.join(resumed, "eval.json"))
  again = train.train_and_evaluate(config, resumed)
  assert again["test_loss"] == result["test_loss"]
  assert [r["train/loss"] for r in read(resumed)] == [r["train/loss"] for r in records]


def test_only_large_sampled_features_are_row_sparse():
  schema = features.Schema.from_config(tiny_config().schema.features)
  assert sparse_update.features(schema, 0) == ()
  assert [f.name for f in sparse_update.features(schema, SPARSE)] == ["ad_id"]
  assert sparse_update.features(schema, 303) == ()
  assert [f.name for f in sparse_update.features(schema, 3)] == ["ad_id"]  # softmax features never
  with pytest.raises(ValueError, match="sparse_update_min_vocab"):
    config_lib.validate(tiny_config(**{"train.sparse_update_min_vocab": -1}))

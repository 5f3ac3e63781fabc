"""The public API as another JAX project uses it: only `gpt_ads.api` is imported from the package."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_ads import api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(trained_run):
  """The shared tiny trained run (conftest: trained by the command line, as a user would) loaded through the API."""
  workdir = trained_run
  params, schema, config = api.load(workdir)
  rng = np.random.default_rng(0)
  lengths = [5, 9, 3]
  events = {f.name: [rng.integers(2, f.vocab_size, n).tolist() for n in lengths] for f in schema}
  events["ad_id"][0][-2:] = [7, 7]  # a repeat, so the copy term is exercised
  batch = api.make_batch(schema, events, length=16)
  return params, schema, config, batch, workdir


def test_load_round_trip_and_init(run):
  params, schema, config, _, workdir = run
  assert sorted(f.name for f in schema) == ["ad_id", "device", "event_type", "time_gap"]
  assert schema["ad_id"].copy_lags == 2 and config.train.num_steps == 30
  fresh = api.init(jax.random.key(0), schema=schema, config=config)
  assert jax.tree.structure(fresh) == jax.tree.structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(params)))
  with pytest.raises(ValueError, match="gpt-ads-train run directory"):
    api.load(os.path.join(workdir, "nope"))


def test_apply_gives_normalized_log_probs(run):
  params, schema, config, batch, _ = run
  logp, hidden = jax.jit(functools.partial(api.apply, schema=schema, config=config))(params, batch)
  assert hidden.shape == (3, 16, config.model.d_model)
  for f in schema:
    total = jnp.exp(jax.nn.logsumexp(logp[f.name], axis=-1))
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    assert float(jnp.exp(logp[f.name][..., 0]).max()) == 0.0  # PAD never predicted


def test_score_matches_apply_and_composes(run):
  params, schema, config, batch, _ = run
  logp, _ = api.apply(params, batch, schema=schema, config=config)
  last = np.array([4, 8, 2])
  v = schema["ad_id"].vocab_size
  cands = jnp.array([7, 2, 3, 100, v - 1])
  bad = api.score(params, batch, "ad_id", jnp.array([0, v]), schema=schema, config=config)
  assert bool(jnp.all(jnp.isneginf(bad)))  # PAD and out-of-vocabulary ids have probability 0
  for name in ("ad_id", "event_type"):
    c = cands if name == "ad_id" else jnp.array([2, 3, 4])
    fn = jax.jit(functools.partial(api.score, feature=name, schema=schema, config=config, vocab_chunk=1000))
    got = fn(params, batch, candidates=c)
    want = logp[name][np.arange(3), last][:, np.asarray(c)]
    np.testing.assert_allclose(got, want, atol=1e-4)
  per_row = jnp.stack([cands, cands[::-1], cands])  # [b, n] candidates
  got = api.score(params, batch, "ad_id", per_row, schema=schema, config=config)
  np.testing.assert_allclose(got[1], logp["ad_id"][1, 8][np.asarray(cands[::-1])], atol=1e-4)
  # grad through score (e.g. fine-tuning a ranker), vmap over a stack of batches.
  g = jax.grad(lambda p: api.score(p, batch, "ad_id", cands, schema=schema, config=config).sum())(params)
  norms = [float(jnp.abs(x).max()) for x in jax.tree.leaves(g)]
  assert all(np.isfinite(norms)) and max(norms) > 0
  stacked = jax.tree.map(lambda x: jnp.stack([x, x]), batch)
  v = jax.vmap(lambda b: api.embed(params, b, schema=schema, config=config))(stacked)
  assert v.shape == (2, 3, config.model.d_model)


def test_embed_pooling(run):
  params, schema, config, batch, _ = run
  _, hidden = api.apply(params, batch, schema=schema, config=config)
  last = api.embed(params, batch, schema=schema, config=config, pooling="last")
  np.testing.assert_allclose(last[2], hidden[2, 2], atol=1e-5)
  mean = api.embed(params, batch, schema=schema, config=config, pooling="mean")
  np.testing.assert_allclose(mean[0], hidden[0, :5].mean(0), atol=1e-5)
  with pytest.raises(ValueError, match="pooling"):
    api.embed(params, batch, schema=schema, config=config, pooling="max")


def test_sample_extends_rows(run):
  params, schema, config, batch, _ = run
  fn = jax.jit(functools.partial(api.sample, num_events=3, schema=schema, config=config, top_k=5))
  out = fn(params, batch, jax.random.key(1))
  again = fn(params, batch, jax.random.key(1))
  lengths = np.array([5, 9, 3])
  np.testing.assert_array_equal(np.asarray(out["segment_ids"]).sum(1), lengths + 3)
  for f in schema:
    o = np.asarray(out[f.name])
    np.testing.assert_array_equal(o, np.asarray(again[f.name]))  # same rng, same events
    for i, n in enumerate(lengths):
      np.testing.assert_array_equal(o[i, :n], batch[f.name][i, :n])  # history kept
      assert (o[i, n:n + 3] >= 1).all() and (o[i, n:n + 3] < f.vocab_size).all()
  np.testing.assert_array_equal(np.asarray(out["positions"])[2, :6], np.arange(6))
  greedy = api.sample(params, batch, jax.random.key(2), num_events=1, schema=schema, config=config, top_k=1)
  logp, _ = api.apply(params, batch, schema=schema, config=config)
  for f in schema:
    np.testing.assert_array_equal(np.asarray(greedy[f.name])[np.arange(3), lengths],
                                  np.argmax(np.asarray(logp[f.name])[np.arange(3), lengths - 1], axis=-1))


def test_export_matches_live_model(run, tmp_path):
  params, schema, config, batch, workdir = run
  out = str(tmp_path / "model.zip")
  proc = subprocess.run([sys.executable, "-m", "gpt_ads.export", f"--workdir={workdir}", f"--out={out}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  from gpt_ads import export  # the reader; the artifact itself needs only jax
  art = export.read(out)
  inputs = art["meta"]["inputs"]
  cands = jnp.array([7, 2, 3, 100], jnp.int32)
  for rows in (slice(0, 3), slice(1, 2)):  # symbolic batch size: 3 and 1
    b = {k: jnp.asarray(v[rows]) for k, v in batch.items()}
    np.testing.assert_allclose(art["embed"].call(*[b[k] for k in inputs]),
                               api.embed(params, b, schema=schema, config=config), atol=1e-5)
    np.testing.assert_allclose(art["score"].call(cands, *[b[k] for k in inputs]),
                               api.score(params, b, "ad_id", cands, schema=schema, config=config), atol=1e-5)
  bad = subprocess.run([sys.executable, "-m", "gpt_ads.export", f"--workdir={tmp_path}", f"--out={out}x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "gpt-ads-export: error:" in bad.stderr and "Traceback" not in bad.stderr

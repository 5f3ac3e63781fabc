"""The public API as another JAX project uses it: only `gpt_ads.api` is imported from the package."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from conftest import subprocess_env
from gpt_ads import api
from numerics import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def _log_probs_by_hand(params, hidden, batch, spec) -> np.ndarray:
  """log p(next event's `spec` = id | history) over the padded vocabulary, [b, t, v] in float64, computed from
  the head's parameters alone: logits h W + bias (sampled: (h W_proj) . table[id] + bias[id], plus the copy
  term's gate of every lag whose id equals `id`), -inf on PAD and on ids past the vocabulary, normalized over
  the rest. Independent of gpt_ads' heads, losses and chunking."""
  h = np.asarray(hidden, np.float64)  # [b, t, d]
  head = jax.tree.map(lambda x: np.asarray(x, np.float64), params["heads"][spec.name])
  if spec.sampled:
    table = np.asarray(params["embed"][spec.name] if spec.tied else head["table"], np.float64)
    logits = (h @ head["proj"]["kernel"]) @ table.T + head["bias"]  # [b, t, v]
    if spec.copy_lags:
      gates = h @ head["copy"]["kernel"] + head["copy"]["bias"]  # [b, t, k]
      ids, seg = np.asarray(batch[spec.name]), np.asarray(batch["segment_ids"])
      for r, t, j in np.ndindex(gates.shape):
        if t - j >= 0 and seg[r, t] > 0 and seg[r, t - j] == seg[r, t] and ids[r, t - j] != 0:
          logits[r, t, ids[r, t - j]] += gates[r, t, j]  # lags holding the same id add up
  else:
    logits = h @ head["kernel"] + head["bias"]
  v = logits.shape[-1]
  logits = np.where((np.arange(v) != 0) & (np.arange(v) < spec.vocab_size), logits, -np.inf)
  return logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)


def _with_random_copy_gates(params):
  """params with the ad_id copy term's kernel and bias drawn at random (trained 30 steps they are still near 0),
  so that a score missing the copy term, or adding it to the wrong ids, is off by whole nats."""
  params = jax.tree.map(jnp.asarray, params)  # a fresh tree: the fixture's params stay as they are
  copy = params["heads"]["ad_id"]["copy"]
  copy["kernel"] = jax.random.normal(jax.random.key(5), copy["kernel"].shape) * 0.5
  copy["bias"] = jnp.array([2.0, -1.0])
  return params


def test_apply_is_the_heads_normalized_over_the_valid_ids(run):
  params, schema, config, batch, _ = run
  params = _with_random_copy_gates(params)
  logp, hidden = jax.jit(functools.partial(api.apply, schema=schema, config=config))(params, batch)
  assert hidden.shape == (3, 16, config.model.d_model)
  real = np.asarray(batch["segment_ids"]) > 0
  for f in schema:
    want = _log_probs_by_hand(params, hidden, batch, f)
    got = np.asarray(logp[f.name], np.float64)
    valid = np.isfinite(want[0, 0])
    assert valid.sum() == f.vocab_size - 1  # OOV and the real values
    assert_close(got[real][:, valid], want[real][:, valid], err_msg=f.name)
    assert float(np.exp(got[real][:, ~valid]).max()) == 0.0, f.name  # PAD and table padding never predicted


def test_score_is_exact_over_the_whole_vocabulary_in_chunks(run):
  """score(c) = log p(c) after each row's last event: the candidate's logit (with the copy term) minus a log
  normalizer summed over every valid id in vocabulary chunks (chunk sizes that do and do not divide it), -inf
  for PAD and out-of-vocabulary ids; per-row candidates score row i against its own ids."""
  params, schema, config, batch, _ = run
  params = _with_random_copy_gates(params)
  last = np.array([4, 8, 2])  # the rows' last events
  _, hidden = api.apply(params, batch, schema=schema, config=config)
  spec = schema["ad_id"]
  want = _log_probs_by_hand(params, hidden, batch, spec)[np.arange(3), last]  # [b, v]
  no_copy = _log_probs_by_hand({**params, "heads": {**params["heads"], "ad_id": {
      **params["heads"]["ad_id"], "copy": jax.tree.map(jnp.zeros_like, params["heads"]["ad_id"]["copy"])}}},
      hidden, batch, spec)[np.arange(3), last]
  assert abs(want[0, 7] - no_copy[0, 7]) > 0.5  # row 0 ends on ad 7, 7: the copy term matters for id 7
  ids = jnp.arange(1, spec.vocab_size)  # every valid id
  for chunk in (7, 64, 4096):  # 301 ids: chunks that leave a remainder, and one chunk for all
    fn = jax.jit(functools.partial(api.score, feature="ad_id", schema=schema, config=config, vocab_chunk=chunk))
    got = np.asarray(fn(params, batch, candidates=ids), np.float64)
    assert_close(got, want[:, 1:spec.vocab_size], err_msg=f"chunk={chunk}")
    assert_close(np.exp(got).sum(axis=1), np.ones(3), err_msg=f"chunk={chunk}")  # normalized over the vocabulary
  v = spec.vocab_size
  bad = api.score(params, batch, "ad_id", jnp.array([0, v, v + 5]), schema=schema, config=config)
  assert bool(jnp.all(jnp.isneginf(bad)))  # PAD and out-of-vocabulary ids have probability 0
  cands = jnp.array([7, 2, 3, 100, v - 1])
  per_row = jnp.stack([cands, cands[::-1], cands])  # [b, n] candidates
  got = api.score(params, batch, "ad_id", per_row, schema=schema, config=config)
  assert_close(got, np.take_along_axis(want, np.asarray(per_row), axis=1))
  et = schema["event_type"]
  want_et = _log_probs_by_hand(params, hidden, batch, et)[np.arange(3), last]
  got = api.score(params, batch, "event_type", jnp.array([2, 3, 4]), schema=schema, config=config)
  assert_close(got, want_et[:, [2, 3, 4]])


def test_score_composes_with_grad_and_vmap(run):
  params, schema, config, batch, _ = run
  cands = jnp.array([7, 2, 3, 100])
  # grad through score (e.g. fine-tuning a ranker), vmap over a stack of batches.
  g = jax.grad(lambda p: api.score(p, batch, "ad_id", cands, schema=schema, config=config).sum())(params)
  norms = [float(jnp.abs(x).max()) for x in jax.tree.leaves(g)]
  assert all(np.isfinite(norms)) and max(norms) > 0
  stacked = jax.tree.map(lambda x: jnp.stack([x, x]), batch)
  v = jax.vmap(lambda b: api.score(params, b, "ad_id", cands, schema=schema, config=config))(stacked)
  assert v.shape == (2, 3, 4)
  assert_close(v[1], api.score(params, batch, "ad_id", cands, schema=schema, config=config))


def test_embed_pooling(run):
  params, schema, config, batch, _ = run
  _, hidden = api.apply(params, batch, schema=schema, config=config)
  last = api.embed(params, batch, schema=schema, config=config, pooling="last")
  assert_close(last[2], hidden[2, 2])
  mean = api.embed(params, batch, schema=schema, config=config, pooling="mean")
  assert_close(mean[0], hidden[0, :5].mean(0))
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
  proc = subprocess.run([sys.executable, "-m", "gpt_ads.cli.export", f"--workdir={workdir}", f"--out={out}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env=subprocess_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  art = api.read_export(out)
  inputs = art["meta"]["inputs"]
  cands = jnp.array([7, 2, 3, 100], jnp.int32)
  for rows in (slice(0, 3), slice(1, 2)):  # symbolic batch size: 3 and 1
    b = {k: jnp.asarray(v[rows]) for k, v in batch.items()}
    assert_close(art["embed"].call(*[b[k] for k in inputs]), api.embed(params, b, schema=schema, config=config))
    assert_close(art["score"].call(cands, *[b[k] for k in inputs]),
                 api.score(params, b, "ad_id", cands, schema=schema, config=config))
  bad = subprocess.run([sys.executable, "-m", "gpt_ads.cli.export", f"--workdir={tmp_path}", f"--out={out}x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "gpt-ads-export: error:" in bad.stderr and "Traceback" not in bad.stderr

"""api.user_evidence (gpt_ads.objective.evidence) against the same statistics computed by hand from api.apply's full
log-probabilities, on the shared tiny trained run (ad_id has a copy term over 2 lags)."""

import functools

import jax
import numpy as np
import pytest

from gpt_ads import api
from gpt_ads.objective import evidence
from numerics import assert_close


@pytest.fixture(scope="module")
def run(trained_run):
  params, schema, config = api.load(trained_run)
  rng = np.random.default_rng(1)
  lengths = [5, 9, 1, 16]  # a user with one event has no predicted event
  events = {f.name: [rng.integers(2, f.vocab_size, n).tolist() for n in lengths] for f in schema}
  events["ad_id"][1][3:6] = [9, 9, 4]  # repeats, so the repeat probability is exercised
  return params, schema, config, api.make_batch(schema, events, length=16), np.array(lengths)


def test_evidence_is_the_full_distributions_statistics(run):
  params, schema, config, batch, lengths = run
  counts = {f.name: np.arange(f.vocab_size) % 7 for f in schema}
  background = {f.name: evidence.background_log_probs(counts[f.name], f.vocab_size) for f in schema}
  fn = jax.jit(functools.partial(api.user_evidence, schema=schema, config=config, background=background,
                                 vocab_chunk=37))  # 37 does not divide the vocabulary: the last chunk slides back
  ev = jax.device_get(fn(params, batch))
  logp, hidden = api.apply(params, batch, schema=schema, config=config)
  np.testing.assert_array_equal(ev["num_predicted"], np.maximum(lengths - 1, 0))
  for f in schema:
    lp = np.asarray(logp[f.name], np.float64)  # [b, t, v]: position t predicts event t + 1
    for r, n in enumerate(lengths):
      if n < 2:
        for stat in ("nll_mean", "nll_std", "entropy", "gain"):
          assert ev[f"{f.name}/{stat}"][r] == 0.0  # no predicted event: no evidence (the tasks exclude them)
        continue
      nxt = batch[f.name][r, 1:n]  # the values predicted at positions 0..n-2
      nll = -lp[r, np.arange(n - 1), nxt]
      p = np.exp(lp[r, :n - 1])
      entropy = -np.sum(np.where(p > 0, p * lp[r, :n - 1], 0.0), axis=-1)
      bg = -np.asarray(background[f.name], np.float64)[nxt]
      msg = f"{f.name} user {r}"
      assert_close(ev[f"{f.name}/nll_mean"][r], nll.mean(), err_msg=msg)
      assert_close(ev[f"{f.name}/nll_std"][r], nll.std(), rtol=1e-4, scale=nll.mean(), err_msg=msg)
      assert_close(ev[f"{f.name}/entropy"][r], entropy.mean(), err_msg=msg)
      assert_close(ev[f"{f.name}/gain"][r], (bg - nll).mean(), scale=bg.mean(), err_msg=msg)
      if f.copy_lags:
        ids = batch[f.name][r, :n]
        recent = [{int(ids[t - j]) for j in range(f.copy_lags) if t - j >= 0} for t in range(n - 1)]
        repeat = np.mean([sum(p[t, i] for i in recent[t]) for t in range(n - 1)])
        assert_close(ev[f"{f.name}/repeat"][r], repeat, err_msg=msg)
  assert "ad_id/repeat" in ev and "event_type/repeat" not in ev  # only features with a copy term
  assert_close(ev["vector/last"], api.embed(params, batch, schema=schema, config=config, pooling="last"))
  assert_close(ev["vector/mean"], api.embed(params, batch, schema=schema, config=config, pooling="mean"))
  assert ev["vector/mean"].shape == (hidden.shape[0], hidden.shape[2])


def test_background_is_the_smoothed_unigram():
  lp = evidence.background_log_probs(np.array([0, 3, 1, 0]), 4, smoothing=0.5)
  np.testing.assert_allclose(np.exp(lp), [0.0, 3.5 / 5.5, 1.5 / 5.5, 0.5 / 5.5], rtol=1e-6)


def test_histograms_count_each_users_values_and_transitions(run):
  params, schema, config, batch, lengths = run
  ev = jax.device_get(jax.jit(functools.partial(api.user_evidence, schema=schema, config=config))(params, batch))
  small = [f for f in schema if f.vocab_size <= evidence.COUNTED_VOCAB]
  assert small and all(f"counts/{f.name}" in ev for f in small)
  assert any(f.vocab_size <= evidence.TRANSITION_VOCAB and f"transitions/{f.name}" in ev for f in small)
  assert not any(k.endswith(f.name) for f in schema if f.vocab_size > evidence.COUNTED_VOCAB for k in ev
                 if k.startswith(("counts/", "transitions/")))
  for f in small:
    v = f.vocab_size
    for r, n in enumerate(lengths):
      ids = batch[f.name][r, :n]  # the user's events only, never the padding after them
      np.testing.assert_array_equal(ev[f"counts/{f.name}"][r], np.bincount(ids, minlength=v), err_msg=f.name)
      if v <= evidence.TRANSITION_VOCAB:
        expected = np.zeros((v, v))
        for a, b in zip(ids[:-1], ids[1:]):
          expected[a, b] += 1
        np.testing.assert_array_equal(ev[f"transitions/{f.name}"][r].reshape(v, v), expected, err_msg=f.name)

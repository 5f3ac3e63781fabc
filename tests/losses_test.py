"""Losses and negative samplers against exact references.

The sampled-softmax tests check the identity case only: every valid id drawn once as a negative with log Q = 0,
where the sampled loss must equal the exact softmax (accidental hits and the copy term included). They say
nothing of the estimator when ids are drawn with n q >> 1 or with a non-uniform Q: its consistency there is
not tested in this file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_ads import features, losses, negatives
from gpt_ads.model.heads import NEG_INF, copy_bonus, recent_ids, valid_ids
from numerics import assert_close

V, E = 50, 8


def _case(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  query = jax.random.normal(k[0], (3, 5, E))
  table = jax.random.normal(k[1], (64, E))  # padded past V
  bias = jax.random.normal(k[2], (64,))
  labels = jax.random.randint(k[3], (3, 5), 1, V)
  return query, table, bias, labels


def _exact(query, table, bias, labels):
  logits = jnp.einsum("bte,ve->btv", query, table) + bias
  logits = jnp.where(valid_ids(V, table.shape[0]), logits, NEG_INF)
  return losses.softmax_xent(logits=logits, labels=labels)


def test_sampled_softmax_with_every_item_as_negative_once_and_log_q_zero_is_exact():
  query, table, bias, labels = _case()
  all_ids = jnp.arange(1, V)  # every valid target id once (the label too: masked as a hit); log Q = 0
  nll = losses.sampled_softmax(query=query, labels=labels, table=table, bias=bias, neg_ids=all_ids,
                               neg_log_q=jnp.zeros(V - 1), pos_log_q=jnp.zeros(labels.shape))
  assert_close(nll, _exact(query, table, bias, labels))


def test_accidental_hits_are_masked():
  query, table, bias, labels = _case(1)
  labels = jnp.full(labels.shape, 7)  # every label is id 7, drawn as a negative 3 more times
  ids = jnp.concatenate([jnp.arange(1, V), jnp.array([7, 7, 7])])
  nll = losses.sampled_softmax(query=query, labels=labels, table=table, bias=bias, neg_ids=ids,
                               neg_log_q=jnp.zeros(ids.shape), pos_log_q=jnp.zeros(labels.shape))
  assert_close(nll, _exact(query, table, bias, labels))


@pytest.mark.parametrize("chunk", [7, 16, 64, 200])
def test_chunked_full_softmax_is_exact(chunk):
  query, table, bias, labels = _case(2)
  nll = losses.full_softmax_nll_chunked(query=query, labels=labels, table=table, bias=bias, vocab_size=V,
                                        chunk=chunk)
  assert_close(nll, _exact(query, table, bias, labels))


def _copy_case(labels, lags=2):
  """Gates and recent ids over a packed [3, 5] batch: row 0 holds two users, so lags never cross into user 1."""
  seg = jnp.array([[1, 1, 2, 2, 2], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  ids = recent_ids(labels, seg, lags)
  gates = jax.random.normal(jax.random.key(9), labels.shape + (lags,)) * 3.0
  return gates, ids, seg


def test_recent_ids_stop_at_user_boundaries():
  labels = jnp.arange(15).reshape(3, 5) + 2
  _, ids, _ = _copy_case(labels)
  np.testing.assert_array_equal(ids[0, :, 0], labels[0])  # lag 0: the event itself
  np.testing.assert_array_equal(ids[0, :, 1], [0, 2, 0, 4, 5])  # lag 1: PAD at each user's first event
  np.testing.assert_array_equal(ids[2, :, 0], [12, 13, 14, 0, 0])  # padding has no history


def _exact_with_copy(query, table, bias, labels, copy):
  logits = jnp.einsum("bte,ve->btv", query, table) + bias + copy_bonus(*copy, jnp.arange(table.shape[0]))
  logits = jnp.where(valid_ids(V, table.shape[0]), logits, NEG_INF)
  return losses.softmax_xent(logits=logits, labels=labels)


def test_copy_term_in_sampled_and_chunked_losses_is_exact():
  query, table, bias, labels = _case(3)
  history = jax.random.randint(jax.random.key(4), labels.shape, 1, V)
  history = history.at[:, 1:].set(jnp.where(jnp.arange(4) % 2 == 0, labels[:, :-1], history[:, 1:]))  # repeats
  gates, ids, _ = _copy_case(history)
  exact = _exact_with_copy(query, table, bias, labels, (gates, ids))
  assert float(jnp.abs(exact - _exact(query, table, bias, labels)).max()) > 0.1  # the term matters here
  all_ids = jnp.arange(1, V)
  nll = losses.sampled_softmax(query=query, labels=labels, table=table, bias=bias, neg_ids=all_ids,
                               neg_log_q=jnp.zeros(V - 1), pos_log_q=jnp.zeros(labels.shape), copy=(gates, ids))
  assert_close(nll, exact)
  for chunk in (7, 64):
    nll = losses.full_softmax_nll_chunked(query=query, labels=labels, table=table, bias=bias, vocab_size=V,
                                          chunk=chunk, copy=(gates, ids))
    assert_close(nll, exact)


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform", "unigram"])
def test_sampler_log_q_matches_draw_frequencies(sampler):
  spec = features.FeatureSpec("x", vocab_size=V, loss="sampled_softmax", num_negatives=20_000, sampler=sampler)
  counts = np.arange(V)[::-1].astype(np.int64) * 10
  uq = jnp.asarray(negatives.unigram_log_probs(counts, V))
  labels = jnp.arange(1, V)[None]
  neg = negatives.sample(jax.random.key(0), spec, labels, labels > 0, uq)
  ids = np.asarray(neg.ids)
  assert ids.min() >= 1 and ids.max() < V  # never PAD, never past the vocabulary
  freq = np.bincount(ids, minlength=V)[1:]  # observed counts of ids 1..V-1
  expected = np.exp(np.asarray(neg.label_log_q[0]))  # n q(id)
  np.testing.assert_allclose(expected.sum(), spec.num_negatives, rtol=1e-4)
  assert np.abs(freq - expected).max() < 5 * np.sqrt(expected.max()) + 5
  # log Q of a drawn id equals the formula applied to it.
  np.testing.assert_allclose(np.asarray(neg.log_q), np.asarray(neg.label_log_q[0])[ids - 1], rtol=1e-5)


def test_in_batch_draws_only_real_targets():
  spec = features.FeatureSpec("x", vocab_size=V, loss="sampled_softmax", num_negatives=256, sampler="in_batch")
  labels = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
  neg = negatives.sample(jax.random.key(0), spec, labels, labels > 0)
  assert set(np.asarray(neg.ids).tolist()) <= {5, 6, 7, 8, 9}

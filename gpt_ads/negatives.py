"""Negative samplers for `sampled_softmax` features: which ids to score against, and their log Q.

log Q(id) is the log of the expected number of times `id` appears among the n negatives (n q(id) for draws
with replacement); subtracting it from the logits makes the sampled softmax an unbiased-in-the-limit estimate
of the full one (Jean et al. 2015; Bengio & Senecal 2008). Ids range over the valid targets 1..V-1 (OOV and
real values, never PAD).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gpt_ads import features as features_lib


class Negatives(NamedTuple):
  ids: jax.Array       # [n] int32
  log_q: jax.Array     # [n] f32, log expected count of each drawn id
  label_log_q: jax.Array  # [b, t] f32, log expected count of each label


def unigram_log_probs(counts: np.ndarray, vocab_size: int, power: float = 0.75) -> np.ndarray:
  """[vocab_size] log q(id) ∝ (count + 1)^power over valid ids (PAD gets -inf): the `unigram` sampler's q."""
  c = np.zeros(vocab_size, np.float64)
  c[: min(len(counts), vocab_size)] = np.asarray(counts, np.float64)[:vocab_size]
  w = (c + 1.0) ** power
  w[features_lib.PAD_ID] = 0.0
  with np.errstate(divide="ignore"):
    return np.log(w / w.sum()).astype(np.float32)


def _log_uniform_log_q(ids: jax.Array, vocab_size: int) -> jax.Array:
  """q(id) for the Zipfian sampler over ranks k = id - 1 in [0, V-1): log((k+2)/(k+1)) / log(V)."""
  k = ids.astype(jnp.float32) - 1.0
  return jnp.log(jnp.log((k + 2.0) / (k + 1.0)) / np.log(vocab_size))


def _draw(rng: jax.Array, weights: jax.Array, n: int) -> jax.Array:
  """n draws (with replacement) of indices of `weights` ∝ weights, by inverse CDF: O(V + n log V) memory/time."""
  cdf = jnp.cumsum(weights.astype(jnp.float32))
  u = jax.random.uniform(rng, (n,), jnp.float32) * cdf[-1]
  return jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, weights.shape[0] - 1).astype(jnp.int32)


def sample(rng: jax.Array, spec: features_lib.FeatureSpec, labels: jax.Array, label_mask: jax.Array,
           unigram_log_q: jax.Array | None = None) -> Negatives:
  """Draws `spec.num_negatives` ids shared by the whole batch.

  Args:
    rng: PRNG key.
    spec: the feature.
    labels: [b, t] target ids of the batch (used by `in_batch`, and for the labels' log Q).
    label_mask: [b, t] bool, which labels are real targets.
    unigram_log_q: [vocab_size] log q for `unigram` (and the `in_batch` correction); None otherwise.
  """
  n, v = spec.num_negatives, spec.vocab_size
  log_n = jnp.log(jnp.float32(n))
  if spec.sampler == "uniform":
    ids = jax.random.randint(rng, (n,), 1, v, dtype=jnp.int32)
    lq = lambda x: log_n - jnp.log(jnp.float32(v - 1)) + jnp.zeros(x.shape, jnp.float32)
  elif spec.sampler == "log_uniform":
    u = jax.random.uniform(rng, (n,), jnp.float32)
    k = jnp.floor(jnp.exp(u * np.log(v))).astype(jnp.int32) - 1  # rank in [0, V-1)
    ids = jnp.clip(k, 0, v - 2) + 1
    lq = lambda x: log_n + _log_uniform_log_q(jnp.maximum(x, 1), v)
  elif spec.sampler == "unigram":
    if unigram_log_q is None:
      raise ValueError(f"feature {spec.name!r}: sampler='unigram' needs value counts from the data set")
    ids = _draw(rng, jnp.exp(unigram_log_q), n)
    lq = lambda x: log_n + jnp.take(unigram_log_q, x)
  elif spec.sampler == "in_batch":
    flat, w = labels.reshape(-1), label_mask.reshape(-1).astype(jnp.float32)
    # n positions drawn among the real targets of the batch (with replacement, so shapes stay static).
    ids = jnp.take(flat, _draw(rng, w, n)).astype(jnp.int32)
    if unigram_log_q is None:  # no counts: treat every id as equally likely (biased toward popular ids)
      lq = lambda x: jnp.zeros(x.shape, jnp.float32)
    else:
      lq = lambda x: log_n + jnp.take(unigram_log_q, x)
  else:
    raise ValueError(f"feature {spec.name!r}: unknown sampler {spec.sampler!r}")
  return Negatives(ids=ids, log_q=lq(ids), label_log_q=lq(labels))

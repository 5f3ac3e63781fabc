"""Negative samplers for `sampled_softmax` features: which ids to score against, and their log Q.

log Q(id) is the log of the expected number of times `id` appears among the n negatives (n q(id) for draws
with replacement); subtracting it from the negatives' logits makes their sum an unbiased estimate of the rest
of the normalizer, and the sampled softmax a consistent estimate of the full one (Bengio & Senecal 2008; the
label itself is not corrected: losses.sampled_softmax says why). Every draw is exact at any vocabulary size
(no float32 inverse CDF over the whole vocabulary; tested at 10M ids). Ids range over the valid targets
1..V-1 (OOV and real values, never PAD).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gpt_ads import features as features_lib


class Negatives(NamedTuple):
  ids: jax.Array       # [n] int32
  log_q: jax.Array     # [n] f32, log expected count of each drawn id
  label_log_q: jax.Array  # [b, t] f32, log expected count of each label (diagnostics: the loss leaves the label
  #                         uncorrected, losses.sampled_softmax)


def unigram_log_probs(counts: np.ndarray, vocab_size: int, power: float = 0.75) -> np.ndarray:
  """[vocab_size] log q(id) ∝ (count + 1)^power over valid ids (PAD gets -inf): the `unigram` sampler's q."""
  c = np.zeros(vocab_size, np.float64)
  c[: min(len(counts), vocab_size)] = np.asarray(counts, np.float64)[:vocab_size]
  w = (c + 1.0) ** power
  w[features_lib.PAD_ID] = 0.0
  with np.errstate(divide="ignore"):
    return np.log(w / w.sum()).astype(np.float32)


BLOCK = 4096  # ids per block of the two-stage `unigram` / `in_batch` draw
REJECTION_ROUNDS = 32  # candidates per `log_uniform` draw; all rejected: probability < 0.5 ** 32


def _log_uniform_log_q(ids: jax.Array, vocab_size: int) -> jax.Array:
  """log q(id) of the Zipfian sampler over ids 1..V-1: q(id) = log(1 + 1 / id) / log(V) (log1p: exact in
  float32 for ids up to and past 10M, where (id + 1) / id rounds to 1)."""
  r = jnp.maximum(ids, 1).astype(jnp.float32)
  return jnp.log(jnp.log1p(1.0 / r)) - np.log(np.log(vocab_size))


def _draw_log_uniform(rng: jax.Array, vocab_size: int, n: int) -> jax.Array:
  """n exact draws of id in 1..V-1 with q(id) = log(1 + 1/id) / log V. Inverse-CDF draws V ** u in float32
  cannot reach every id near V (float spacing at 1M is ~1), so: pick the octave [2^m, 2^(m+1)) of the id by
  its exact mass log(hi / lo) / log V (at most 25 values), then a uniform integer in it, accepted with
  probability q(id) / q(2^m) >= 1/2 (rejection sampling: exact conditional within the octave)."""
  top = int(np.floor(np.log2(vocab_size - 1)))
  lo = 2 ** np.arange(top + 1, dtype=np.int64)  # [octaves]
  hi = np.minimum(2 * lo, vocab_size)           # exclusive
  mass = np.log(hi / lo)                        # float64, exact enough; normalized by categorical
  k_oct, k_cand, k_acc = jax.random.split(rng, 3)
  octave = jax.random.categorical(k_oct, jnp.asarray(np.log(mass), jnp.float32), shape=(n,))  # [n]
  base = jnp.asarray(lo, jnp.int32)[octave]
  size = jnp.asarray(hi - lo, jnp.int32)[octave]
  cand = base + jax.random.randint(k_cand, (REJECTION_ROUNDS, n), 0, size)  # [rounds, n]
  accept_p = jnp.log1p(1.0 / cand.astype(jnp.float32)) / jnp.log1p(1.0 / base.astype(jnp.float32))
  accept = jax.random.uniform(k_acc, (REJECTION_ROUNDS, n)) < accept_p
  first = jnp.argmax(accept, axis=0)  # the first accepted round (0 when none: probability < 2^-32)
  return jnp.take_along_axis(cand, first[None], axis=0)[0].astype(jnp.int32)


def _draw(rng: jax.Array, weights: jax.Array, n: int) -> jax.Array:
  """n draws (with replacement) of indices of `weights` ∝ weights, exact to float32 precision at any V (one
  float32 cumulative sum over 10M weights cannot resolve the tail's ids): a block of BLOCK indices by inverse
  CDF over the blocks' masses, then an index by inverse CDF within the block (a binary search of the block's
  own cumulative sum). O(V + n log BLOCK) time, O(V + n) memory."""
  v = weights.shape[0]
  nb = -(-v // BLOCK)
  w = jnp.pad(weights.astype(jnp.float32), (0, nb * BLOCK - v)).reshape(nb, BLOCK)  # [blocks, BLOCK]
  within = jnp.cumsum(w, axis=1)  # [blocks, BLOCK]
  k_block, k_within = jax.random.split(rng)
  block = _inverse_cdf(k_block, within[:, -1], n)  # [n]
  u = jax.random.uniform(k_within, (n,)) * within[block, -1]  # [n]
  flat = within.reshape(-1)
  lo, hi = jnp.zeros((n,), jnp.int32), jnp.full((n,), BLOCK - 1, jnp.int32)
  for _ in range(int(np.ceil(np.log2(BLOCK)))):  # the first j with cdf[j] > u
    mid = (lo + hi) // 2
    above = flat[block * BLOCK + mid] > u
    lo, hi = jnp.where(above, lo, mid + 1), jnp.where(above, mid, hi)
  last = jnp.max(jnp.where(w > 0, jnp.arange(BLOCK), 0), axis=1)  # [blocks]; u can round up to the total
  return (block * BLOCK + jnp.minimum(lo, last[block])).astype(jnp.int32)


def _inverse_cdf(rng: jax.Array, weights: jax.Array, n: int) -> jax.Array:
  """n indices ∝ weights [m] (never one of weight 0)."""
  cdf = jnp.cumsum(weights)
  i = jnp.searchsorted(cdf, jax.random.uniform(rng, (n,)) * cdf[-1], side="right")
  return jnp.minimum(i, jnp.max(jnp.where(weights > 0, jnp.arange(weights.shape[0]), 0)))


def sample(rng: jax.Array, spec: features_lib.FeatureSpec, labels: jax.Array, label_mask: jax.Array,
           unigram_log_q: jax.Array | None = None) -> Negatives:
  """Draws `spec.num_negatives` ids shared by the whole batch.

  Args:
    rng: PRNG key.
    spec: the feature.
    labels: [b, t] target ids of the batch (used by `in_batch`, and for the labels' log Q).
    label_mask: [b, t] bool, which labels are real targets.
    unigram_log_q: [vocab_size] log q for `unigram`; None otherwise.
  """
  n, v = spec.num_negatives, spec.vocab_size
  log_n = jnp.log(jnp.float32(n))
  if spec.sampler == "uniform":
    ids = jax.random.randint(rng, (n,), 1, v, dtype=jnp.int32)
    lq = lambda x: log_n - jnp.log(jnp.float32(v - 1)) + jnp.zeros(x.shape, jnp.float32)
  elif spec.sampler == "log_uniform":
    ids = _draw_log_uniform(rng, v, n)
    lq = lambda x: log_n + _log_uniform_log_q(x, v)
  elif spec.sampler == "unigram":
    if unigram_log_q is None:
      raise ValueError(f"feature {spec.name!r}: sampler='unigram' needs value counts from the data set")
    ids = _draw(rng, jnp.exp(unigram_log_q), n)
    lq = lambda x: log_n + jnp.take(unigram_log_q, x)
  elif spec.sampler == "in_batch":
    # n draws among the batch's real targets (with replacement, so shapes stay static): id is drawn with
    # probability (its count among them) / (their number), and that is the q it is corrected with.
    counts = jnp.zeros((v,), jnp.float32).at[labels.reshape(-1)].add(label_mask.reshape(-1).astype(jnp.float32))
    ids = _draw(rng, counts, n)
    # Ids not in the batch are never drawn; 0 keeps their log Q finite (a batch without targets: no NaN).
    log_freq = jnp.where(counts > 0, jnp.log(counts) - jnp.log(jnp.maximum(counts.sum(), 1.0)), 0.0)
    lq = lambda x: log_n + jnp.take(log_freq, x)
  else:
    raise ValueError(f"feature {spec.name!r}: unknown sampler {spec.sampler!r}")
  return Negatives(ids=ids, log_q=lq(ids), label_log_q=lq(labels))

"""Per-example losses. Keyword-only, they return per-position values [b, t]; reduction is the caller's.

Einsum letters: b batch, t time, e embedding width, v vocabulary, n negatives, c vocabulary chunk,
k time chunk, d the head's input width.
"""

import functools

import jax
import jax.numpy as jnp

from gpt_ads.model import layers
from gpt_ads.model.heads import NEG_INF, copy_bonus, valid_ids


def softmax_xent(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Exact cross-entropy. logits [b, t, v] (invalid ids already at NEG_INF), labels [b, t] -> nll [b, t]."""
  logits = logits.astype(jnp.float32)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - label_logit


def _time_chunks(x: jax.Array, chunk: int) -> jax.Array:
  """[b, t, ...] -> [t / chunk, b, chunk, ...] (t padded with zeros to a multiple of chunk): the batch axis, and
  so its sharding, stays whole inside every chunk."""
  b, t = x.shape[:2]
  n = -(-t // chunk)
  x = jnp.pad(x, ((0, 0), (0, n * chunk - t)) + ((0, 0),) * (x.ndim - 2))
  return jnp.swapaxes(x.reshape((b, n, chunk) + x.shape[2:]), 0, 1)


def _from_time_chunks(x: jax.Array, t: int) -> jax.Array:
  """The inverse of `_time_chunks`: [n, b, chunk, ...] -> [b, t, ...]."""
  n, b, chunk = x.shape[:3]
  return jnp.swapaxes(x, 0, 1).reshape((b, n * chunk) + x.shape[3:])[:, :t]


def _chunk_nll(x, kernel, labels):
  """One chunk's logits x . kernel ([b, k, v] f32, in x's dtype with f32 accumulation) and nll [b, k]."""
  logits = jnp.einsum("bkd,dv->bkv", x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return logits, jax.nn.logsumexp(logits, axis=-1) - label_logit


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def linear_softmax_xent(inputs: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array,
                        chunk: int) -> jax.Array:
  """Σ_{b,t} weights · exact cross-entropy of the logits inputs . kernel, without ever holding the [b, t, v] logits.

  The head's matmul and the softmax cross-entropy run fused over chunks of `chunk` time steps of every row
  ([b, chunk, v] logits at a time, which stay in cache on a CPU), and the gradient is formed in the same pass
  as the loss (softmax minus one-hot, then the two matmuls back): one pass of the logits instead of the three
  to five [b, t, v] reads and writes of logits -> logsumexp -> autodiff. It is a scalar's VJP, so the gradient
  computed forward is scaled by the cotangent afterwards (the trick of fused linear cross-entropy kernels).
  Plain evaluation (no gradient) takes the loss-only pass.

  Args:
    inputs: [b, t, d] the head's input (its dtype is the matmul's; accumulation and the softmax are f32).
    kernel: [d, v] (the bias and the invalid-id offset ride in it, heads.SoftmaxHead).
    labels: [b, t] int; weights: [b, t] f32 (0 where a position is not a target; e.g. mask / number of targets).
    chunk: time steps per chunk (static).
  Returns:
    [] f32: Σ weights · nll.
  """
  def body(total, xs):
    x, y, w = xs
    return total + jnp.sum(w * _chunk_nll(x, kernel, y)[1]), None
  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                          tuple(_time_chunks(a, chunk) for a in (inputs, labels, weights)))
  return total


def _linear_softmax_xent_fwd(inputs, kernel, labels, weights, chunk):
  def body(carry, xs):
    total, d_kernel = carry
    x, y, w = xs  # [b, k, d], [b, k], [b, k]
    logits, nll = _chunk_nll(x, kernel, y)
    g = (jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)) * w[..., None]
    g = g.astype(x.dtype)  # [b, k, v] d(w . nll) / d logits
    d_x = jnp.einsum("bkv,dv->bkd", g, kernel.astype(x.dtype), preferred_element_type=jnp.float32)
    d_kernel = d_kernel + jnp.einsum("bkd,bkv->dv", x, g, preferred_element_type=jnp.float32)
    return (total + jnp.sum(w * nll), d_kernel), (d_x, nll)

  zeros = (jnp.zeros((), jnp.float32), jnp.zeros(kernel.shape, jnp.float32))
  (total, d_kernel), (d_x, nll) = jax.lax.scan(
      body, zeros, tuple(_time_chunks(a, chunk) for a in (inputs, labels, weights)))
  t = inputs.shape[1]
  d_x = _from_time_chunks(d_x, t).astype(inputs.dtype)
  return total, (d_x, d_kernel.astype(kernel.dtype), _from_time_chunks(nll, t))


def _linear_softmax_xent_bwd(chunk, residuals, g):
  del chunk
  d_x, d_kernel, nll = residuals
  return (g * d_x).astype(d_x.dtype), (g * d_kernel).astype(d_kernel.dtype), None, g * nll


linear_softmax_xent.defvjp(_linear_softmax_xent_fwd, _linear_softmax_xent_bwd)


def sampled_softmax(*, query: jax.Array, labels: jax.Array, table: jax.Array, bias: jax.Array,
                    neg_ids: jax.Array, neg_log_q: jax.Array,
                    copy: tuple[jax.Array, jax.Array] | None = None, dtype=jnp.float32) -> jax.Array:
  """Sampled softmax with shared negatives, logQ correction on the negatives and accidental-hit masking.

  With logits s(id) = query . table[id] + bias[id], the normalizer Z = exp(s_y) + Σ_{id != y} exp(s(id)) is
  estimated by exp(s_y) + Σ_{drawn j != y} exp(s_j - log Q_j), Q_j = n q(j) the expected number of draws of
  j: the second term is an unbiased estimate of Σ_{id != y} exp(s(id)) (accidental hits dropped, the rest
  importance-weighted), and the label's own term is exact and NOT corrected. So the gradient on the label's
  logit tends to -(1 - p_y) as n grows, and the expected gradient vanishes at the true distribution even for
  peaked targets (n q_y >> 1; tests/objective/losses_test.py). Correcting the label by log Q_y too (TensorFlow's
  convention) shrinks its term as n q_y grows and drives that gradient to -1: an over-confident model.
  With every valid id drawn once as a negative and log Q = 0 this is the exact softmax.

  Args:
    query: [b, t, e]; labels: [b, t]; table: [v, e]; bias: [v].
    neg_ids: [n] negatives shared by the batch; neg_log_q: [n] their log Q (log expected draw counts).
    copy: (gates [b, t, k], recent ids [b, t, k]) of the feature's copy term, or None.
    dtype: the operands' dtype of the [b, t, e] x [n, e] negatives' matmul (`layers.einsum`: bf16 operands with
      f32 accumulation and a bf16 backward; the label's logit, the correction and the softmax stay f32).
  Returns:
    nll [b, t].
  """
  query = query.astype(jnp.float32)
  pos = jnp.einsum("bte,bte->bt", query, jnp.take(table, labels, axis=0).astype(jnp.float32))
  pos = pos + jnp.take(bias, labels)  # [b, t]
  neg = layers.einsum("bte,ne->btn", query, jnp.take(table, neg_ids, axis=0), dtype, jnp.float32)
  neg = neg + jnp.take(bias, neg_ids)[None, None] - neg_log_q[None, None]  # [b, t, n]
  if copy is not None:
    pos = pos + copy_bonus(*copy, labels)
    neg = neg + copy_bonus(*copy, neg_ids)
  neg = jnp.where(neg_ids[None, None, :] == labels[..., None], NEG_INF, neg)
  # log(exp(pos) + Σ exp(neg)) without concatenating the label's logit to the [b, t, n] negatives (a copy).
  return jnp.logaddexp(pos, jax.nn.logsumexp(neg, axis=-1)) - pos


def _scan_vocab(query, table, bias, vocab_size: int, chunk: int, copy, with_entropy: bool):
  """One pass over the vocabulary in chunks with an online logsumexp: -> (max m, Σ exp(l - m), and with
  `with_entropy` Σ exp(l - m) l, else None), each [b, t], over the valid ids' logits l."""
  query = query.astype(jnp.float32)
  v = table.shape[0]
  chunk = min(chunk, v)
  num_chunks = -(-v // chunk)
  # Chunk k covers ids [k c, (k + 1) c); the last one is slid back to end at v (read in place with a dynamic
  # slice: padding or reshaping the table would copy all of it) and skips the ids the previous chunk scored.
  starts = jnp.minimum(jnp.arange(num_chunks, dtype=jnp.int32) * chunk, v - chunk)
  valid = valid_ids(vocab_size, v)

  def body(carry, k):
    m, s, u = carry  # running max, Σ exp(logit - max) and Σ exp(logit - max) logit, [b, t]
    start = starts[k]
    tab = jax.lax.dynamic_slice_in_dim(table, start, chunk)  # [c, e]
    chunk_ids = start + jnp.arange(chunk, dtype=jnp.int32)
    keep = jax.lax.dynamic_slice_in_dim(valid, start, chunk) & (chunk_ids >= k * chunk)
    b = jnp.where(keep, jax.lax.dynamic_slice_in_dim(bias, start, chunk), NEG_INF)  # [c]
    logits = jnp.einsum("bte,ce->btc", query, tab.astype(jnp.float32)) + b  # [b, t, c]
    if copy is not None:
      logits = logits + copy_bonus(*copy, chunk_ids)
    m_new = jnp.maximum(m, logits.max(-1))
    w = jnp.exp(logits - m_new[..., None])  # [b, t, c]; 0 on masked ids
    decay = jnp.exp(m - m_new)
    s = s * decay + w.sum(-1)
    if with_entropy:
      u = u * decay + jnp.sum(w * logits, axis=-1)  # masked ids: w = 0 exactly (NEG_INF is finite)
    return (m_new, s, u), None

  shape = query.shape[:-1]
  zeros = jnp.zeros(shape, jnp.float32)
  (m, s, u), _ = jax.lax.scan(body, (jnp.full(shape, -jnp.inf, jnp.float32), zeros, zeros),
                              jnp.arange(num_chunks, dtype=jnp.int32))
  return m, s, (u if with_entropy else None)


def log_normalizer_chunked(*, query: jax.Array, table: jax.Array, bias: jax.Array, vocab_size: int, chunk: int,
                           copy: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """log Σ_id exp(query · table[id] + bias[id] (+ copy term)) over the valid ids, in vocabulary chunks (memory
  O(b t c), not O(b t v)) with an online logsumexp.

  Args:
    query: [b, t, e]; table: [v, e]; bias: [v].
    vocab_size: the feature's true vocabulary (ids >= it, and PAD, are excluded).
    chunk: ids scored at a time.
    copy: (gates [b, t, k], recent ids [b, t, k]) of the feature's copy term, or None.
  Returns:
    [b, t].
  """
  m, s, _ = _scan_vocab(query, table, bias, vocab_size, chunk, copy, with_entropy=False)
  return m + jnp.log(s)


def log_normalizer_and_entropy_chunked(*, query: jax.Array, table: jax.Array, bias: jax.Array, vocab_size: int,
                                       chunk: int, copy: tuple[jax.Array, jax.Array] | None = None):
  """`log_normalizer_chunked` and the entropy of the distribution it normalizes, in the same pass:
  -> (log Z [b, t], H [b, t] nats), H = log Z - E_p[logit]."""
  m, s, u = _scan_vocab(query, table, bias, vocab_size, chunk, copy, with_entropy=True)
  log_z = m + jnp.log(s)
  return log_z, log_z - u / s  # E_p[logit] = u / s
def label_logits(*, query: jax.Array, labels: jax.Array, table: jax.Array, bias: jax.Array,
                 copy: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """The unnormalized logit of one id per position: query [b, t, e], labels [b, t] -> [b, t] (dot product + bias
  + copy term)."""
  pos = jnp.einsum("bte,bte->bt", query.astype(jnp.float32), jnp.take(table, labels, axis=0).astype(jnp.float32))
  pos = pos + jnp.take(bias, labels)
  return pos if copy is None else pos + copy_bonus(*copy, labels)


def full_softmax_nll_chunked(*, query: jax.Array, labels: jax.Array, table: jax.Array, bias: jax.Array,
                             vocab_size: int, chunk: int,
                             copy: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """EXACT full-vocabulary NLL of a sampled feature, in vocabulary chunks (memory O(b t c), not O(b t v)).

  Args:
    query: [b, t, e]; labels: [b, t]; table: [v, e]; bias: [v].
    vocab_size: the feature's true vocabulary (ids >= it, and PAD, are excluded from the normalizer).
    chunk: ids scored at a time.
    copy: (gates [b, t, k], recent ids [b, t, k]) of the feature's copy term, or None.
  Returns:
    nll [b, t].
  """
  log_z = log_normalizer_chunked(query=query, table=table, bias=bias, vocab_size=vocab_size, chunk=chunk,
                                 copy=copy)
  return log_z - label_logits(query=query, labels=labels, table=table, bias=bias, copy=copy)

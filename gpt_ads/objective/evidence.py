"""Per-user evidence from one forward pass of a pre-trained model: what the downstream detectors read.

    ev = evidence.user_evidence(params, outputs, hidden, batch, schema=schema, chunk=4096, background=bg)

Rows are one user each (left-aligned, `api.make_batch`'s layout). For every feature f, over the user's predicted
events (position t predicts event t + 1 of the same user, `objective.targets`):
  f/nll_mean, f/nll_std  exact NLL of the observed value (full vocabulary; chunked for sampled features)
  f/entropy              mean entropy of the predictive distribution, nats: how sure the model was
  f/gain                 mean (background NLL - model NLL), background = the context-free training unigram
                         (`background_log_probs`): how much the user's own history explains (with `background`)
  f/repeat               (features with a copy term) mean predicted probability that the next value repeats one
                         of the user's last k values
and "num_predicted" [b] (a user with a single event has none: no evidence), "vector/last" (the hidden state
after the last event) and "vector/mean" (the mean over events), [b, d]. Every entry is [b] f32 unless noted.
For low-cardinality features the user's own value histograms, over ALL its events (inputs, not predictions):
  counts/f        [b, v] how often each id occurs (features with v <= COUNTED_VOCAB)
  transitions/f   [b, v * v] how often id i is followed by id j in the next event, at i * v + j (v <=
                  TRANSITION_VOCAB)
The log-likelihood ratio between two populations that draw such a feature i.i.d. (or as a Markov chain) is
linear in these counts, which no mean of per-event statistics recovers: a supervised detector reads them to tell
apart groups whose rows differ only slightly (BUILD_NOTES, Downstream).
Pure and jit-able; memory O(b t c) for a sampled feature (vocabulary chunks of c ids), O(b t v) for a softmax one.

Einsum letters: b batch, t time, d model width, e feature embedding width, k copy lags.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gpt_ads import features as features_lib
from gpt_ads.model.heads import copy_inputs, output_table, take_at
from gpt_ads.objective import losses, objective

VECTORS = ("last", "mean")  # user-vector poolings, "vector/<pooling>"
COUNTED_VOCAB = 64      # features with at most this many ids get "counts/<name>"
TRANSITION_VOCAB = 8    # ... and at most this many "transitions/<name>" (v * v columns)


def background_log_probs(counts: np.ndarray, vocab_size: int, smoothing: float = 0.5) -> np.ndarray:
  """[vocab_size] f32 log p of a feature's context-free unigram from its training value counts: add-`smoothing`
  over the valid ids (OOV and the values); PAD gets log 0 = -inf."""
  c = np.zeros(vocab_size, np.float64)
  c[:min(len(counts), vocab_size)] = np.asarray(counts, np.float64)[:vocab_size]
  c = c + smoothing
  c[features_lib.PAD_ID] = 0.0
  with np.errstate(divide="ignore"):
    return np.log(c / c.sum()).astype(np.float32)


def last_index(segment_ids: jax.Array) -> jax.Array:
  """[b] the position of each row's last event (rows left-aligned, one user each)."""
  return jnp.maximum(jnp.sum(segment_ids > 0, axis=1) - 1, 0)


def pool(hidden: jax.Array, segment_ids: jax.Array, pooling: str) -> jax.Array:
  """User vectors [b, d] from hidden states [b, t, d]: after the last event ("last") or the mean over events."""
  if pooling == "last":
    return take_at(hidden, last_index(segment_ids))[:, 0]
  if pooling == "mean":
    m = (segment_ids > 0).astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  raise ValueError(f"pooling={pooling!r} must be one of {VECTORS}")


def histograms(batch: dict[str, jax.Array], schema: features_lib.Schema) -> dict[str, jax.Array]:
  """{"counts/<f>": [b, v], "transitions/<f>": [b, v * v]} f32 of the low-cardinality features (module
  docstring), over each row's events (segment_ids > 0; rows left-aligned)."""
  valid = batch[features_lib.SEGMENT_IDS] > 0  # [b, t]
  pair = valid[:, 1:] & valid[:, :-1]          # [b, t - 1]: consecutive events of the same user
  out = {}
  for f in schema:
    v, ids = f.vocab_size, batch[f.name]
    if v <= COUNTED_VOCAB:
      out[f"counts/{f.name}"] = jnp.einsum("btv,bt->bv", jax.nn.one_hot(ids, v), valid.astype(jnp.float32))
    if v <= TRANSITION_VOCAB:
      out[f"transitions/{f.name}"] = jnp.einsum("btv,bt->bv", jax.nn.one_hot(ids[:, :-1] * v + ids[:, 1:], v * v),
                                                pair.astype(jnp.float32))
  return out


def _sampled_stats(params, outputs, spec, labels, chunk: int):
  """A sampled feature at every position: -> (nll, entropy, repeat probability or None), each [b, t]."""
  table, bias = output_table(params, spec)
  query, copy = outputs[spec.name], copy_inputs(outputs, spec)
  log_z, entropy = losses.log_normalizer_and_entropy_chunked(query=query, table=table, bias=bias,
                                                             vocab_size=spec.vocab_size, chunk=chunk, copy=copy)
  logit = lambda ids: losses.label_logits(query=query, labels=ids, table=table, bias=bias, copy=copy)  # noqa: E731
  nll = log_z - logit(labels)
  if copy is None:
    return nll, entropy, None
  recent = copy[1]  # [b, t, k]: the user's last k values (PAD where there are fewer)
  repeat = jnp.zeros_like(nll)
  for j in range(recent.shape[-1]):
    ids = recent[..., j]
    first = ids != features_lib.PAD_ID  # each distinct value once: not already at a smaller lag
    for i in range(j):
      first &= ids != recent[..., i]
    repeat += jnp.where(first, jnp.exp(logit(ids) - log_z), 0.0)
  return nll, entropy, repeat


def _softmax_stats(outputs, spec, labels):
  """A softmax feature at every position: -> (nll, entropy), each [b, t] (invalid ids are at NEG_INF already)."""
  logp = jax.nn.log_softmax(outputs[spec.name].astype(jnp.float32), axis=-1)  # [b, t, v]
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  return nll, -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def user_evidence(params, outputs: dict[str, jax.Array], hidden: jax.Array, batch: dict[str, jax.Array], *,
                  schema: features_lib.Schema, chunk: int,
                  background: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
  """The module docstring's evidence of every row's user, from the model's `outputs` and `hidden` [b, t, d] on
  `batch`. `background`: {feature: [vocab_size] log p} (`background_log_probs`); without it no f/gain."""
  labels, mask = objective.targets(batch, schema)
  out = {}
  for f in schema:
    m = mask[f.name].astype(jnp.float32)  # [b, t]
    n = jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [b]
    mean = lambda x: jnp.sum(x * m, axis=1) / n  # noqa: E731, B023
    if f.sampled:
      nll, entropy, repeat = _sampled_stats(params, outputs, f, labels[f.name], chunk)
    else:
      (nll, entropy), repeat = _softmax_stats(outputs, f, labels[f.name]), None
    nll = jnp.where(mask[f.name], nll, 0.0)
    out[f"{f.name}/nll_mean"] = mean(nll)
    out[f"{f.name}/nll_std"] = jnp.sqrt(mean((nll - out[f"{f.name}/nll_mean"][:, None]) ** 2))
    out[f"{f.name}/entropy"] = mean(entropy)
    if background is not None:
      bg_nll = -jnp.take(jnp.asarray(background[f.name]), labels[f.name])
      out[f"{f.name}/gain"] = mean(jnp.where(mask[f.name], bg_nll - nll, 0.0))
    if repeat is not None:
      out[f"{f.name}/repeat"] = mean(repeat)
  out["num_predicted"] = jnp.max(jnp.stack([jnp.sum(mk, axis=1) for mk in mask.values()]), axis=0)
  for pooling in VECTORS:
    out[f"vector/{pooling}"] = pool(hidden, batch[features_lib.SEGMENT_IDS], pooling)
  return out | histograms(batch, schema)

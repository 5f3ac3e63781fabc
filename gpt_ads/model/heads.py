"""FeatureHeads: one output head per schema feature.

- `softmax` features: dense logits over the (padded) vocabulary, [b, t, v], invalid ids (PAD, padding rows)
  pushed to ~-1e9 (a constant [v] offset, so the backward pass is the identity, not a [b, t, v] select), so the
  model's logits are a proper distribution as they stand. With `logits=False` (what training asks for) the head
  returns the matmul that makes them instead (`LinearLogits`), so the loss can run it fused with the
  cross-entropy, chunk by chunk (gpt_ads.objective.losses.linear_softmax_xent), and [b, t, v] is never held.
- `sampled_softmax` features: a query in the feature's embedding space, [b, t, e]. Scores against candidate ids
  are `query . table[id] + bias[id]`, with `table` the input embedding table (tied) or the head's own (untied);
  `output_table` fetches them from the params so losses can score any subset of ids.
- copy term (`copy_lags` = k > 0, sampled features): the head also returns gates [b, t, k] (a linear function of
  the hidden state) and the ids of the user's last k events [b, t, k] (lag 0 = event t itself, PAD where the
  user has no such event), under `copy_keys(name)`. A candidate's logit gains the gates of the lags whose value
  it equals (`copy_bonus`): "the same ad again" gets its own learned score, which a dot product against an
  embedding table can only approximate by bending every ad's embedding toward its own direction.

Einsum letters: b batch, t time, d model width, e feature embedding width, v vocabulary.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model import axes, chain
from gpt_ads.model.config import ModelConfig
from gpt_ads.model.embed import EMBED_INIT, padded_vocab
from gpt_ads.model.layers import Dense

NEG_INF = -1e9  # finite, so that 0 * NEG_INF stays finite in masked sums


def valid_ids(vocab_size: int, padded: int) -> jax.Array:
  """[v] bool: ids a feature can take as a target: OOV and real values, not PAD nor table padding."""
  ids = jnp.arange(padded)
  return (ids != features_lib.PAD_ID) & (ids < vocab_size)


def invalid_offset(vocab_size: int, padded: int) -> jax.Array:
  """[v] f32: 0 on valid ids, NEG_INF on the others; added to [b, t, v] logits it masks them at the cost of a
  broadcast add (its gradient is the identity; a select's would be another [b, t, v] pass)."""
  return jnp.where(valid_ids(vocab_size, padded), 0.0, NEG_INF).astype(jnp.float32)


class SampledHead(nn.Module):
  """Query projection d -> e, per-id output bias, and (untied) an output table.

  Attributes:
    spec: the feature; cfg: the ModelConfig.
  """
  spec: features_lib.FeatureSpec
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
    """-> query [b, t, e], or (query, copy gates [b, t, k]) when the feature has a copy term."""
    f, cfg = self.spec, self.cfg
    v = padded_vocab(f.vocab_size, cfg.vocab_pad_multiple)
    self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (axes.P_VOCAB,)), (v,), jnp.float32)
    if not f.tied:
      self.param("table", nn.with_logical_partitioning(EMBED_INIT, (axes.P_VOCAB, axes.P_FEATURE)),
                 (v, f.embed_dim), jnp.float32)
    q = Dense("btd,de->bte", (cfg.d_model, f.embed_dim), (axes.P_EMBED, axes.P_FEATURE), dtype=jnp.dtype(cfg.dtype),
              name="proj")(h)
    if not f.copy_lags:
      return q.astype(jnp.float32)  # [b, t, e]
    gates = Dense("btd,dk->btk", (cfg.d_model, f.copy_lags), (axes.P_EMBED, None), use_bias=True,
                  bias_axes=(None,), kernel_init=nn.initializers.zeros, name="copy")(h)  # [b, t, k], f32
    return q.astype(jnp.float32), gates.astype(jnp.float32)


class LinearLogits(NamedTuple):
  """An exact feature's logits as the matmul that makes them: logits [b, t, v] = inputs . kernel (f32 accumulation)."""
  inputs: jax.Array  # [b, t, d + 1] in the compute dtype, the last column 1
  kernel: jax.Array  # [d + 1, v] in the compute dtype, the last row bias + invalid_offset

  def logits(self) -> jax.Array:
    """[b, t, v] f32."""
    return jnp.einsum("btd,dv->btv", self.inputs, self.kernel, preferred_element_type=jnp.float32)


class SoftmaxHead(nn.Module):
  """Logits over the padded vocabulary: [b, t, d] -> [b, t, v] f32 = h . kernel + bias + `invalid_offset`, or with
  `logits=False` the same as `LinearLogits`.

  The [v] bias and offset ride in the matmul as one more input row against a constant-1 column of h
  ([b, t, d + 1] x [d + 1, v]): added afterwards they cost a separate read and write of the [b, t, v] logits
  (on a 2-core CPU ~8% of an ML-1M step). Params are a Dense's: kernel [d, v], bias [v].

  Attributes:
    spec: the feature; cfg: the ModelConfig.
  """
  spec: features_lib.FeatureSpec
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h: jax.Array, logits: bool = True) -> jax.Array | LinearLogits:
    f, cfg = self.spec, self.cfg
    v = padded_vocab(f.vocab_size, cfg.vocab_pad_multiple)
    kernel_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.P_EMBED, axes.P_VOCAB))
    kernel = self.param("kernel", kernel_init, (cfg.d_model, v), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (axes.P_VOCAB,)), (v,), jnp.float32)
    shift = bias + invalid_offset(f.vocab_size, v)  # [v]
    h1 = jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)  # [b, t, d + 1]
    w1 = jnp.concatenate([kernel, shift[None]], axis=0)  # [d + 1, v]
    dtype = cfg.logits_dtype
    h1, w1 = h1.astype(dtype), w1.astype(dtype)
    factors = LinearLogits(h1, w1)
    if not logits:
      return factors
    return nn.with_logical_constraint(factors.logits(), (axes.BATCH, axes.LENGTH, axes.VOCAB))


def copy_keys(name: str) -> tuple[str, str]:
  """The output keys of a feature's copy gates and copy ids."""
  return f"{name}/copy_gates", f"{name}/copy_ids"


def recent_ids(ids: jax.Array, segment_ids: jax.Array, lags: int) -> jax.Array:
  """[b, t] ids -> [b, t, lags]: the id at position t - j for lag j, PAD where that is another user or padding."""
  t = ids.shape[1]
  cols = []
  for j in range(lags):
    prev = jnp.pad(ids, ((0, 0), (j, 0)), constant_values=features_lib.PAD_ID)[:, :t]
    prev_seg = jnp.pad(segment_ids, ((0, 0), (j, 0)))[:, :t]
    cols.append(jnp.where((prev_seg == segment_ids) & (segment_ids > 0), prev, features_lib.PAD_ID))
  return jnp.stack(cols, axis=-1)


def copy_bonus(gates: jax.Array, ids: jax.Array, candidates: jax.Array) -> jax.Array:
  """The copy term of candidate logits: sum of the gates of the lags whose id equals the candidate.

  Args:
    gates: [b, t, k]; ids: [b, t, k] the recent ids (`recent_ids`).
    candidates: [b, t] (one candidate per position) or [n] (shared by every position).
  Returns:
    [b, t] or [b, t, n].
  """
  if candidates.ndim == 1:
    hit = ids[:, :, None, :] == candidates[None, None, :, None]  # [b, t, n, k]
    return jnp.sum(jnp.where(hit, gates[:, :, None, :], 0.0), axis=-1)
  return jnp.sum(jnp.where(ids == candidates[..., None], gates, 0.0), axis=-1)


def take_at(x: jax.Array, at: jax.Array) -> jax.Array:
  """x [b, t, ...] at one position per row, at [b] -> [b, 1, ...]."""
  return jnp.take_along_axis(x, at.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)


class FeatureHeads(nn.Module):
  """[b, t, d] hidden states -> {feature: logits [b, t, v] (`LinearLogits` with `logits=False`) or query [b, t, e]}
  (f32), plus for features with a copy term {copy_keys(name): (gates [b, t, k] f32, recent ids [b, t, k] int32)}.
  With `at` ([b] positions)
  every output is taken at those positions only: t = 1, and the heads' matmuls run on [b, 1, d]. Under the
  "chain" factorization (gpt_ads.model.chain) feature j's head reads `ChainInput` (params `chain_<name>`) of
  the hidden state and `values`: {name: embedding [b, t or 1, e] of the next event's value} of the features
  before j in `event_order`.

  Attributes:
    schema: the features; cfg: the ModelConfig.
  """
  schema: features_lib.Schema
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h: jax.Array, batch: dict[str, jax.Array], at: jax.Array | None = None,
               values: dict[str, jax.Array] | None = None, logits: bool = True) -> dict[str, jax.Array]:
    cfg = self.cfg
    if at is not None:
      h = take_at(h, at)  # [b, 1, d]
    conditions = chain.earlier(self.schema, cfg)
    out = {}
    for f in self.schema:
      hf = h
      if conditions[f.name]:
        hf = chain.ChainInput(cfg, name=f"chain_{f.name}")(h, [values[n] for n in conditions[f.name]])
      if f.sampled and f.copy_lags:
        gates_key, ids_key = copy_keys(f.name)
        out[f.name], out[gates_key] = SampledHead(f, cfg, name=f.name)(hf)
        out[ids_key] = recent_ids(batch[f.name], batch[features_lib.SEGMENT_IDS], f.copy_lags)  # [b, t, k]
        if at is not None:
          out[ids_key] = take_at(out[ids_key], at)
      elif f.sampled:
        out[f.name] = SampledHead(f, cfg, name=f.name)(hf)
      else:
        out[f.name] = SoftmaxHead(f, cfg, name=f.name)(hf, logits=logits)
    return out


def output_table(params, spec: features_lib.FeatureSpec) -> tuple[jax.Array, jax.Array]:
  """The [v, e] output table and [v] bias that score a sampled feature's ids (tied: the input table)."""
  head = params["heads"][spec.name]
  table = params["embed"][spec.name] if spec.tied else head["table"]
  return table, head["bias"]


def id_param_paths(spec: features_lib.FeatureSpec) -> tuple[tuple[str, ...], ...]:
  """Where a sampled feature's per-id parameters (one row per id) live in params: the input table, the output
  bias and, untied, the output table (what FeatureEmbed and `output_table` read)."""
  paths = (("embed", spec.name), ("heads", spec.name, "bias"))
  return paths if spec.tied else paths + (("heads", spec.name, "table"),)


def copy_inputs(outputs: dict[str, jax.Array], spec: features_lib.FeatureSpec):
  """(gates [b, t, k], recent ids [b, t, k]) of a feature with a copy term, else None."""
  if not spec.copy_lags:
    return None
  gates_key, ids_key = copy_keys(spec.name)
  return outputs[gates_key], outputs[ids_key]

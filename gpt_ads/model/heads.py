"""FeatureHeads: one output head per schema feature.

- `softmax` features: dense logits over the (padded) vocabulary, [b, t, v], invalid ids (PAD, padding rows) at
  -inf, so the model's logits are a proper distribution as they stand.
- `sampled_softmax` features: a query in the feature's embedding space, [b, t, e]. Scores against candidate ids
  are `query . table[id] + bias[id]`, with `table` the input embedding table (tied) or the head's own (untied);
  `output_table` fetches them from the params so losses can score any subset of ids.

Einsum letters: b batch, t time, d model width, e feature embedding width, v vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model import axes
from gpt_ads.model.config import ModelConfig
from gpt_ads.model.embed import EMBED_INIT, padded_vocab
from gpt_ads.model.layers import Dense

NEG_INF = -1e9  # finite, so that 0 * NEG_INF stays finite in masked sums


def valid_ids(vocab_size: int, padded: int) -> jax.Array:
  """[v] bool: ids a feature can take as a target: OOV and real values, not PAD nor table padding."""
  ids = jnp.arange(padded)
  return (ids != features_lib.PAD_ID) & (ids < vocab_size)


class SampledHead(nn.Module):
  """Query projection d -> e, per-id output bias, and (untied) an output table.

  Attributes:
    spec: the feature; cfg: the ModelConfig.
  """
  spec: features_lib.FeatureSpec
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    f, cfg = self.spec, self.cfg
    v = padded_vocab(f.vocab_size, cfg.vocab_pad_multiple)
    self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (axes.P_VOCAB,)), (v,), jnp.float32)
    if not f.tied:
      self.param("table", nn.with_logical_partitioning(EMBED_INIT, (axes.P_VOCAB, axes.P_FEATURE)),
                 (v, f.embed_dim), jnp.float32)
    q = Dense("btd,de->bte", (cfg.d_model, f.embed_dim), (axes.P_EMBED, axes.P_FEATURE), dtype=jnp.dtype(cfg.dtype),
              name="proj")(h)
    return q.astype(jnp.float32)  # [b, t, e]


class FeatureHeads(nn.Module):
  """[b, t, d] hidden states -> {feature: logits [b, t, v] or query [b, t, e]} (f32).

  Attributes:
    schema: the features; cfg: the ModelConfig.
  """
  schema: features_lib.Schema
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h: jax.Array) -> dict[str, jax.Array]:
    cfg = self.cfg
    out = {}
    for f in self.schema:
      if f.sampled:
        out[f.name] = SampledHead(f, cfg, name=f.name)(h)
      else:
        v = padded_vocab(f.vocab_size, cfg.vocab_pad_multiple)
        logits = Dense("btd,dv->btv", (cfg.d_model, v), (axes.P_EMBED, axes.P_VOCAB), use_bias=True,
                       bias_axes=(axes.P_VOCAB,), dtype=jnp.dtype(cfg.dtype), name=f.name)(h)
        logits = jnp.where(valid_ids(f.vocab_size, v), logits.astype(jnp.float32), NEG_INF)
        out[f.name] = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
    return out


def output_table(params, spec: features_lib.FeatureSpec) -> tuple[jax.Array, jax.Array]:
  """The [v, e] output table and [v] bias that score a sampled feature's ids (tied: the input table)."""
  head = params["heads"][spec.name]
  table = params["embed"][spec.name] if spec.tied else head["table"]
  return table, head["bias"]

"""FeatureEmbed: one table per schema feature, combined into one d-wide vector per event, plus positions.

Einsum letters: b batch, t time, d model width, e a feature's embedding width, v a feature's (padded) vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model import axes
from gpt_ads.model.config import ModelConfig
from gpt_ads.model.layers import Dense

EMBED_INIT = nn.initializers.normal(stddev=0.02)


def padded_vocab(vocab_size: int, multiple: int) -> int:
  """Tables are padded to a multiple of `multiple` rows so the vocabulary axis shards evenly."""
  return -(-vocab_size // multiple) * multiple


class FeatureEmbed(nn.Module):
  """Per-feature embeddings, combined by sum (each projected to d if e != d) or by concat then project.

  Its params are `<feature name>`: the [v, e] table (also the tied output table of sampled features),
  `<name>_proj` / `combine`: the projections, and `positions`: the [max_len, d] position table.

  Attributes:
    schema: the features.
    cfg: the ModelConfig.
  """
  schema: features_lib.Schema
  cfg: ModelConfig

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array],
               lookup: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-> (x [b, t, d], {name: the table rows of `lookup[name]` ids, [..., e] in the compute dtype}); `lookup`
    reads the same tables for other ids (the chain heads' next-event values)."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    parts, looked_up = [], {}
    for f in self.schema:
      table = self.param(f.name, nn.with_logical_partitioning(EMBED_INIT, (axes.P_VOCAB, _width_axis(f, cfg))),
                         (padded_vocab(f.vocab_size, cfg.vocab_pad_multiple), f.embed_dim), jnp.float32)
      if lookup and f.name in lookup:
        looked_up[f.name] = jnp.take(table, lookup[f.name], axis=0).astype(dtype)  # [..., e]
      x = jnp.take(table, batch[f.name], axis=0).astype(dtype)  # [b, t, e]
      if cfg.combine == "sum" and f.embed_dim != cfg.d_model:
        x = Dense("bte,ed->btd", (f.embed_dim, cfg.d_model), (axes.P_FEATURE, axes.P_EMBED),
                  dtype=dtype, name=f"{f.name}_proj")(x)
      parts.append(x)
    if cfg.combine == "sum":
      x = sum(parts)  # [b, t, d]
    else:
      x = jnp.concatenate(parts, axis=-1)  # [b, t, Σe]
      x = Dense("btc,cd->btd", (x.shape[-1], cfg.d_model), (axes.P_FEATURE, axes.P_EMBED), dtype=dtype,
                name="combine")(x)
    pos = self.param("positions", nn.with_logical_partitioning(EMBED_INIT, (axes.P_POSITION, axes.P_EMBED)),
                     (cfg.max_len, cfg.d_model), jnp.float32)
    x = x + jnp.take(pos, batch[features_lib.POSITIONS], axis=0).astype(dtype)  # [b, t, d]
    return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), looked_up


def _width_axis(f: features_lib.FeatureSpec, cfg) -> str:
  """A table's width is the model axis when it equals d (so FSDP shards it like every d-wide parameter)."""
  return axes.P_EMBED if f.embed_dim == cfg.d_model else axes.P_FEATURE

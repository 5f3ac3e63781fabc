"""Mlp and the pre-norm DecoderBlock.

Einsum letters: b batch, t time, d model width, f MLP width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads.model import axes
from gpt_ads.model.attention import CausalAttention
from gpt_ads.model.config import ModelConfig
from gpt_ads.model.layers import Dense, RMSNorm


class Mlp(nn.Module):
  """d -> f (GELU) -> d.

  Attributes:
    mlp_dim: f; dropout: output dropout; dtype: compute dtype.
  """
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    d = x.shape[-1]
    h = Dense("btd,df->btf", (d, self.mlp_dim), (axes.P_EMBED, axes.P_MLP), use_bias=True, bias_axes=(axes.P_MLP,),
              dtype=self.dtype, name="wi")(x)  # [b, t, f]
    h = nn.with_logical_constraint(jax.nn.gelu(h), (axes.BATCH, axes.LENGTH, axes.MLP))
    y = Dense("btf,fd->btd", (self.mlp_dim, d), (axes.P_MLP, axes.P_EMBED), use_bias=True, bias_axes=(axes.P_EMBED,),
              dtype=self.dtype, name="wo")(h)  # [b, t, d]
    return nn.Dropout(self.dropout)(y, deterministic=deterministic)


class DecoderBlock(nn.Module):
  """x + Attn(RMSNorm(x)), then + Mlp(RMSNorm(.)). Scan-compatible: returns (x, None).

  Attributes:
    cfg: the ModelConfig.
    deterministic: no dropout (an attribute, not an argument, so scan and remat see no Python bool).
  """
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array):
    cfg, deterministic = self.cfg, self.deterministic
    dtype = jnp.dtype(cfg.dtype)
    h = RMSNorm(dtype=dtype, name="attn_norm")(x)
    x = x + CausalAttention(cfg.num_heads, cfg.d_model // cfg.num_heads, cfg.dropout, dtype, cfg.attention,
                            name="attn")(h, mask, deterministic=deterministic)
    h = RMSNorm(dtype=dtype, name="mlp_norm")(x)
    x = x + Mlp(cfg.mlp_dim, cfg.dropout, dtype, name="mlp")(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
    return x, None

"""CausalAttention: multi-head self-attention that never crosses users (segments) nor looks ahead.

Einsum letters: b batch, t query time, s key time, d model width, h heads, k head width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads.model import axes
from gpt_ads.model.layers import Dense


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """[b, t] segment ids (0 = padding) -> [b, 1, t, s] bool: causal, same segment, and padding attends to itself.

  Padding rows attend only to themselves so that every softmax row has at least one key (no NaN); their outputs
  are never used.
  """
  t = segment_ids.shape[1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))  # [t, s]
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, t, s]
  mask = causal[None] & same & (segment_ids[:, None, :] > 0)
  mask = mask | jnp.eye(t, dtype=bool)[None]
  return mask[:, None]  # [b, 1, t, s]


class CausalAttention(nn.Module):
  """Pre-projected multi-head attention via `jax.nn.dot_product_attention`.

  Attributes:
    num_heads: h; head_dim: k.
    dropout: dropout rate on the output.
    dtype: compute dtype.
  """
  num_heads: int
  head_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    d, h, k = x.shape[-1], self.num_heads, self.head_dim

    def proj(name):
      return Dense("btd,dhk->bthk", (d, h, k), (axes.P_EMBED, axes.P_HEADS, axes.P_KV), dtype=self.dtype,
                   name=name)(x)  # [b, t, h, k]

    q, key, v = proj("query"), proj("key"), proj("value")
    q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    out = jax.nn.dot_product_attention(q, key, v, mask=mask)  # [b, t, h, k]
    out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    y = Dense("bthk,hkd->btd", (h, k, d), (axes.P_HEADS, axes.P_KV, axes.P_EMBED), dtype=self.dtype,
              name="out")(out)  # [b, t, d]
    return nn.Dropout(self.dropout)(y, deterministic=deterministic)

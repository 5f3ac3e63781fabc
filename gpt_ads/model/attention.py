"""CausalAttention: multi-head self-attention that never crosses users (segments) nor looks ahead.

Einsum letters: b batch, t query time, s key time, d model width, h heads, k head width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads.model import axes
from gpt_ads.model.layers import Dense


def attention_mask(segment_ids: jax.Array, *, causal: bool = True) -> jax.Array:
  """[b, t] segment ids (0 = padding) -> [b, 1, t, s] bool: causal, same segment, and padding attends to itself.

  Padding rows attend only to themselves so that every softmax row has at least one key (no NaN); their outputs
  are never used. `causal=False`: the same-segment part alone, for an implementation that applies causality
  itself (`attend`'s cuDNN path, which then skips the upper triangle): padding attends to the padding before it,
  every row keeps its diagonal, and real positions see exactly the keys of the causal mask.
  """
  t = segment_ids.shape[1]
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, t, s]
  if not causal:
    return same[:, None]
  causal_mask = jnp.tril(jnp.ones((t, t), dtype=bool))  # [t, s]
  mask = causal_mask[None] & same & (segment_ids[:, None, :] > 0)
  mask = mask | jnp.eye(t, dtype=bool)[None]
  return mask[:, None]  # [b, 1, t, s]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str) -> jax.Array:
  """[b, t, h, k] attention output through `jax.nn.dot_product_attention`. "xla": `mask` is the whole
  `attention_mask`; "cudnn" (NVIDIA GPUs, bf16): `mask` is `attention_mask(causal=False)` and causality is
  cuDNN's own (is_causal: the fused flash kernel, which never computes the masked upper triangle)."""
  if implementation == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


class CausalAttention(nn.Module):
  """Pre-projected multi-head attention via `jax.nn.dot_product_attention`.

  Attributes:
    num_heads: h; head_dim: k.
    dropout: dropout rate on the output.
    dtype: compute dtype.
    implementation: one of gpt_ads.model.config.ATTENTION (`attend`); `mask` must be the matching `attention_mask`.
  """
  num_heads: int
  head_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  implementation: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    d, h, k = x.shape[-1], self.num_heads, self.head_dim

    def proj(name):
      return Dense("btd,dhk->bthk", (d, h, k), (axes.P_EMBED, axes.P_HEADS, axes.P_KV), dtype=self.dtype,
                   name=name)(x)  # [b, t, h, k]

    q, key, v = proj("query"), proj("key"), proj("value")
    q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    out = attend(q, key, v, mask, self.implementation)  # [b, t, h, k]
    out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    y = Dense("bthk,hkd->btd", (h, k, d), (axes.P_HEADS, axes.P_KV, axes.P_EMBED), dtype=self.dtype,
              name="out")(out)  # [b, t, d]
    return nn.Dropout(self.dropout)(y, deterministic=deterministic)

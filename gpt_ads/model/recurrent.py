"""RecurrentDecoder: stacked pre-norm residual LSTM layers, a drop-in for `Decoder` (`config.model.backbone="lstm"`).

Einsum letters: b batch, t time, d model width (= the LSTM state width), g the 4 gates stacked (4d, gate order
i, f, g, o).

Packed rows: the carry (c, h) is zeroed before every position whose segment id differs from the previous one, so
a user never sees the state of the user packed before it (padding, segment 0, starts a segment of its own).
Each layer computes its input projections for all positions in one matmul, then scans over time with only the
recurrent matmul inside the loop.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads.model import axes
from gpt_ads.model.config import ModelConfig
from gpt_ads.model.decoder import stack_layers
from gpt_ads.model.layers import Dense, RMSNorm, einsum


def segment_starts(segment_ids: jax.Array) -> jax.Array:
  """[b, t] segment ids -> [b, t] bool, True where a new segment (user or padding) starts."""
  prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)  # [b, t]
  return segment_ids != prev


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Zeros, except 1 for the forget gate (the second quarter): remember by default."""
  del key
  d = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[..., d:2 * d].set(1.0)


class Lstm(nn.Module):
  """[b, t, d] inputs + [b, t] reset mask -> [b, t, d] LSTM hidden states (state zeroed where reset).

  Attributes:
    dtype: compute dtype of the matmuls (f32 accumulation); the cell state and gate math stay f32.
  """
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, reset: jax.Array) -> jax.Array:
    b, _, d = x.shape
    xg = Dense("btd,dg->btg", (d, 4 * d), (axes.P_EMBED, axes.P_MLP), dtype=self.dtype, name="wi")(x)  # [b, t, g]
    xg = nn.with_logical_constraint(xg, (axes.BATCH, axes.LENGTH, axes.MLP)).astype(jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(_gate_bias_init, (axes.P_MLP,)), (4 * d,), jnp.float32)
    xg = xg + bias  # [b, t, g], bias added in f32
    wh = self.param("wh", nn.with_logical_partitioning(nn.initializers.orthogonal(), (axes.P_EMBED, axes.P_MLP)),
                    (d, 4 * d), jnp.float32)

    def step(carry, inputs):
      c, h = carry  # [b, d] f32, [b, d] f32
      xg_t, reset_t = inputs  # [b, g], [b]
      keep = (~reset_t)[:, None].astype(jnp.float32)  # [b, 1]
      c, h = c * keep, h * keep
      gates = xg_t + einsum("bd,dg->bg", h, wh, self.dtype).astype(jnp.float32)  # [b, g]
      i, f, g, o = jnp.split(gates, 4, axis=-1)  # each [b, d]
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (c, h), h

    zeros = jnp.zeros((b, d), jnp.float32)
    _, hs = jax.lax.scan(step, (zeros, zeros), (jnp.swapaxes(xg, 0, 1), jnp.swapaxes(reset, 0, 1)))  # [t, b, d]
    return jnp.swapaxes(hs, 0, 1).astype(self.dtype)  # [b, t, d]


class LstmBlock(nn.Module):
  """x + Dropout(Lstm(RMSNorm(x))). Scan-compatible: returns (x, None).

  Attributes:
    cfg: the ModelConfig.
    deterministic: no dropout.
  """
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, reset: jax.Array):
    dtype = jnp.dtype(self.cfg.dtype)
    h = RMSNorm(dtype=dtype, name="lstm_norm")(x)
    h = Lstm(dtype, name="lstm")(h, reset)  # [b, t, d]
    x = x + nn.Dropout(self.cfg.dropout)(h, deterministic=self.deterministic)
    x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
    return x, None


class RecurrentDecoder(nn.Module):
  """[b, t, d] embeddings + [b, t] segment ids -> [b, t, d] final (normed) hidden states; same interface as Decoder.

  Attributes:
    cfg: the ModelConfig (d_model, num_layers, dropout, dtype, remat, scan_layers are read).
    deterministic: no dropout.
  """
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array) -> jax.Array:
    cfg = self.cfg
    reset = segment_starts(segment_ids)  # [b, t]
    x = stack_layers(LstmBlock, cfg, self.deterministic, x, reset)
    return RMSNorm(dtype=jnp.dtype(cfg.dtype), name="final_norm")(x)

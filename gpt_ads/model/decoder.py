"""Decoder: a stack of DecoderBlocks under `nn.scan` (one compiled block, flat compile time) with remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads.model import axes
from gpt_ads.model.attention import attention_mask
from gpt_ads.model.block import DecoderBlock
from gpt_ads.model.config import REMAT_POLICIES, ModelConfig
from gpt_ads.model.layers import RMSNorm

def stack_layers(block, cfg: ModelConfig, deterministic: bool, x: jax.Array, side: jax.Array) -> jax.Array:
  """`cfg.num_layers` copies of `block` ((cfg, deterministic) -> (x, side) -> (x, None)), rematerialized by
  `cfg.remat` and scanned (params stacked on a "layers" axis, `cfg.scan_unroll` blocks per loop iteration) or
  unrolled. Call it from a compact module: the layers become that module's children ("layers" or "layer_<i>")."""
  if cfg.remat != "none":
    block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast,), length=cfg.num_layers,
                    metadata_params={nn.PARTITION_NAME: axes.P_LAYERS},
                    unroll=cfg.scan_unroll or cfg.num_layers)
    x, _ = stack(cfg, deterministic, name="layers")(x, side)
    return x
  for i in range(cfg.num_layers):
    x, _ = block(cfg, deterministic, name=f"layer_{i}")(x, side)
  return x


class Decoder(nn.Module):
  """[b, t, d] embeddings + [b, t] segment ids -> [b, t, d] final (normed) hidden states.

  Attributes:
    cfg: the ModelConfig.
    deterministic: no dropout.
  """
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array) -> jax.Array:
    cfg = self.cfg
    mask = attention_mask(segment_ids, causal=cfg.attention == "xla")  # [b, 1, t, s]
    x = stack_layers(DecoderBlock, cfg, self.deterministic, x, mask)
    return RMSNorm(dtype=jnp.dtype(cfg.dtype), name="final_norm")(x)

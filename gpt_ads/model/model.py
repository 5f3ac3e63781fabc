"""Model = FeatureEmbed -> Decoder -> FeatureHeads, used as pure `init` / `apply`.

    outputs, hidden = Model(schema, cfg).apply({"params": params}, batch)

`batch` holds one [b, t] int32 id array per schema feature plus `segment_ids` ([b, t], 0 = padding, one id per
user within a row, so packed rows work) and `positions` ([b, t], restarting at 0 for each user). `outputs[name]`
at position t scores the feature's value of the NEXT event (t + 1) of the same user; `hidden` ([b, t, d]) is the
user representation after event t.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model.decoder import REMAT_POLICIES, Decoder
from gpt_ads.model.embed import FeatureEmbed
from gpt_ads.model.heads import FeatureHeads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyper-parameters (hashable), built from `config.model`.

  Attributes:
    d_model, num_layers, num_heads, mlp_dim: transformer sizes.
    max_len: rows of the position table (the longest user window).
    dropout: rate on embeddings, attention and MLP outputs.
    dtype: compute dtype, "float32" or "bfloat16" (params and accumulation stay f32).
    combine: "sum" or "concat" (then project) of the per-feature input embeddings.
    remat: one of REMAT_POLICIES.
    scan_layers: scan the blocks (flat compile time) or unroll them.
    vocab_pad_multiple: vocabulary tables are padded to a multiple of this.
  """
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  max_len: int = 64
  dropout: float = 0.0
  dtype: str = "float32"
  combine: str = "sum"
  remat: str = "none"
  scan_layers: bool = True
  vocab_pad_multiple: int = 128

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f"config.model.d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
    if self.combine not in ("sum", "concat"):
      raise ValueError(f"config.model.combine={self.combine!r} must be 'sum' or 'concat'")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"config.model.remat={self.remat!r} must be one of {sorted(REMAT_POLICIES)}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"config.model.dtype={self.dtype!r} must be 'float32' or 'bfloat16'")

  @classmethod
  def from_config(cls, model_cfg) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in model_cfg.items() if k in fields}
    return cls(**d)


class Model(nn.Module):
  """The multi-feature GPT.

  Attributes:
    schema: the event schema; cfg: the ModelConfig.
  """
  schema: features_lib.Schema
  cfg: ModelConfig

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, deterministic: bool = True):
    x = FeatureEmbed(self.schema, self.cfg, name="embed")(batch)  # [b, t, d]
    x = nn.Dropout(self.cfg.dropout)(x, deterministic=deterministic)
    hidden = Decoder(self.cfg, deterministic, name="decoder")(x, batch["segment_ids"])  # [b, t, d]
    outputs = FeatureHeads(self.schema, self.cfg, name="heads")(hidden)
    return outputs, hidden.astype(jnp.float32)


def dummy_batch(schema: features_lib.Schema, batch_size: int, length: int) -> dict[str, jax.Array]:
  """A batch of the right structure (for init and shape inference)."""
  b = {f.name: jnp.full((batch_size, length), features_lib.OOV_ID, jnp.int32) for f in schema}
  b["segment_ids"] = jnp.ones((batch_size, length), jnp.int32)
  b["positions"] = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch_size, length))
  return b

"""Model = FeatureEmbed -> Decoder (or RecurrentDecoder, by `cfg.backbone`) -> FeatureHeads, as pure `init` / `apply`.

    outputs, hidden = Model(schema, cfg).apply({"params": params}, batch)

`batch` holds one [b, t] int32 id array per schema feature plus `segment_ids` ([b, t], 0 = padding, one id per
user within a row, so packed rows work) and `positions` ([b, t], restarting at 0 for each user). `outputs[name]`
at position t scores the feature's value of the NEXT event (t + 1) of the same user; `hidden` ([b, t, d]) is the
user representation after event t. `at` ([b] positions) applies the heads at one position per row only
(outputs [b, 1, ...]): what scoring the next event needs, without an exact feature's [b, t, v] logits. A
sampled feature with a copy term (`copy_lags`) adds two more outputs (`heads.copy_keys`): its gates and the ids
they apply to.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model.config import ModelConfig
from gpt_ads.model.decoder import Decoder
from gpt_ads.model.embed import FeatureEmbed
from gpt_ads.model.heads import FeatureHeads
from gpt_ads.model.recurrent import RecurrentDecoder


class Model(nn.Module):
  """The multi-feature GPT.

  Attributes:
    schema: the event schema; cfg: the ModelConfig.
  """
  schema: features_lib.Schema
  cfg: ModelConfig

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, deterministic: bool = True, at: jax.Array | None = None):
    x = FeatureEmbed(self.schema, self.cfg, name="embed")(batch)  # [b, t, d]
    x = nn.Dropout(self.cfg.dropout)(x, deterministic=deterministic)
    backbone = RecurrentDecoder if self.cfg.backbone == "lstm" else Decoder
    hidden = backbone(self.cfg, deterministic, name="decoder")(x, batch["segment_ids"])  # [b, t, d]
    outputs = FeatureHeads(self.schema, self.cfg, name="heads")(hidden, batch, at=at)
    return outputs, hidden.astype(jnp.float32)


def dummy_batch(schema: features_lib.Schema, batch_size: int, length: int) -> dict[str, jax.Array]:
  """A batch of the right structure (for init and shape inference)."""
  b = {f.name: jnp.full((batch_size, length), features_lib.OOV_ID, jnp.int32) for f in schema}
  b["segment_ids"] = jnp.ones((batch_size, length), jnp.int32)
  b["positions"] = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch_size, length))
  return b

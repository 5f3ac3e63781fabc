"""Model = FeatureEmbed -> Decoder (or RecurrentDecoder, by `cfg.backbone`) -> FeatureHeads, as pure `init` / `apply`.

    outputs, hidden = Model(schema, cfg).apply({"params": params}, batch)

`batch` holds one [b, t] int32 id array per schema feature plus `segment_ids` ([b, t], 0 = padding, one id per
user within a row, so packed rows work) and `positions` ([b, t], restarting at 0 for each user). `outputs[name]`
at position t scores the feature's value of the NEXT event (t + 1) of the same user; `hidden` ([b, t, d]) is the
user representation after event t. `at` ([b] positions) applies the heads at one position per row only
(outputs [b, 1, ...]): what scoring the next event needs, without an exact feature's [b, t, v] logits. A
sampled feature with a copy term (`copy_lags`) adds two more outputs (`heads.copy_keys`): its gates and the ids
they apply to. `logits=False` gives an exact feature's logits as `heads.LinearLogits` (the matmul that makes
them), for a loss that fuses it with the cross-entropy (what training does).

Under `cfg.event_factorization == "chain"` (gpt_ads.model.chain) a feature's output also conditions on the next
event's values of the features before it in `event_order`: teacher-forced from `batch` one position on, or with
`at`, `given` ({name: [b] ids}; PAD where not given). `hidden` ([b, t, d], from an earlier call on the same
batch) skips the decoder: what drawing an event's features one by one needs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model import chain
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
  def __call__(self, batch: dict[str, jax.Array], *, deterministic: bool = True, at: jax.Array | None = None,
               given: dict[str, jax.Array] | None = None, hidden: jax.Array | None = None, logits: bool = True):
    conditioning = sorted({n for names in chain.earlier(self.schema, self.cfg).values() for n in names})
    x, values = FeatureEmbed(self.schema, self.cfg, name="embed")(
        batch, lookup=chain.next_ids(batch, conditioning, at, given))  # [b, t, d], {name: [b, t or 1, e]}
    if hidden is None:
      x = nn.Dropout(self.cfg.dropout)(x, deterministic=deterministic)
      backbone = RecurrentDecoder if self.cfg.backbone == "lstm" else Decoder
      hidden = backbone(self.cfg, deterministic, name="decoder")(x, batch[features_lib.SEGMENT_IDS])  # [b, t, d]
    outputs = FeatureHeads(self.schema, self.cfg, name="heads")(hidden, batch, at=at, values=values, logits=logits)
    return outputs, hidden.astype(jnp.float32)


def from_config(schema: features_lib.Schema, config) -> Model:
  """The model of a run config (its `model` section; a ModelConfig also works) for `schema`."""
  return Model(schema, config if isinstance(config, ModelConfig) else ModelConfig.from_config(config.model))


def init_params(model: Model, rng: jax.Array) -> dict:
  """Fresh params from a dummy batch (the one place the model is initialized), still in flax's
  LogicallyPartitioned boxes (they carry the logical axis names; `nn.unbox` drops them)."""
  return model.init({"params": rng}, dummy_batch(model.schema, 1, model.cfg.max_len))["params"]


def dummy_batch(schema: features_lib.Schema, batch_size: int, length: int) -> dict[str, jax.Array]:
  """A batch of the right structure (for init and shape inference)."""
  b = {f.name: jnp.full((batch_size, length), features_lib.OOV_ID, jnp.int32) for f in schema}
  b[features_lib.SEGMENT_IDS] = jnp.ones((batch_size, length), jnp.int32)
  b[features_lib.POSITIONS] = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch_size, length))
  return b

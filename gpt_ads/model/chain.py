"""The event factorization (`config.model.event_factorization`, one of config.FACTORIZATIONS): how the heads
of one event's features depend on each other.

- "independent" (the study's): every feature of event t + 1 is predicted from the hidden state h_t alone,
  p(X_{t+1} | X_<=t) = Π_j p(F_j | h_t). Cheapest; exact only when an event's features are independent given
  the history.
- "chain": the chain rule over the features in `event_order`, p(X_{t+1} | X_<=t) = Π_j p(F_j | h_t, F_<j), the
  exact joint. Feature j's head reads c_j = ChainInput(h_t, embeddings of the values of the features before j
  in the same event): the input embedding tables (no new per-id parameters), concatenated and projected to d,
  added to h_t, then a residual MLP (so a value can change which values of a later feature are likely, not
  only shift their logits). The hidden state is computed once per position; the chain costs one d x d MLP per
  conditioned feature on [b, t, d].

Which values condition the heads (`next_ids`): in training and evaluation the next event's own values, read
from the batch one position on (teacher forcing; where there is no next event of the same user the values are
PAD, so a packed row gives each user exactly the outputs it gets alone, and nothing there is a target).
Scoring or sampling at one position (`at`), the caller gives them (`api.score(given=)`, `api.sample` in order,
value by value); a value not given is PAD, and the heads after it are then not meaningful.

Einsum letters: b batch, t time, d model width, c the concatenated embedding widths of the earlier features.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model import axes
from gpt_ads.model.block import Mlp
from gpt_ads.model.config import ModelConfig
from gpt_ads.model.layers import Dense, RMSNorm


def event_order(schema: features_lib.Schema, cfg: ModelConfig) -> tuple[str, ...]:
  """The order of the chain rule: the features named in `cfg.event_order` (comma-separated) first, in that
  order, then the others: sampled (high-cardinality id) features, then softmax ones, each in schema order.

  Why ids first by default: ranking the next event's ad then needs no sum over the other features
  (`api.score`), and an id often determines much of the rest of its event (campaign, advertiser, placement). On
  the generated data it is 0.011 nats per event behind the best order tried, low-cardinality features first
  (BUILD_NOTES "Event factorization")."""
  named = tuple(n.strip() for n in cfg.event_order.split(",") if n.strip())
  unknown = [n for n in named if n not in schema.names]
  if unknown or len(set(named)) != len(named):
    raise ValueError(f"config.model.event_order={cfg.event_order!r}: "
                     + (f"{unknown} are not features of the schema {list(schema.names)}" if unknown
                        else "a feature is named twice") + "; name each schema feature at most once")
  rest = [f for f in schema if f.name not in named]
  return named + tuple(f.name for f in rest if f.sampled) + tuple(f.name for f in rest if not f.sampled)


def earlier(schema: features_lib.Schema, cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
  """{feature: the features its head conditions on}: the ones before it in `event_order` under "chain", none
  under "independent"."""
  if cfg.event_factorization != "chain":
    return {n: () for n in schema.names}
  order = event_order(schema, cfg)
  return {n: order[:i] for i, n in enumerate(order)}


def next_event(x: jax.Array, fill: int) -> jax.Array:
  """[b, t] -> [b, t]: the value at t + 1 (`fill` at the last position)."""
  return jnp.pad(x[:, 1:], ((0, 0), (0, 1)), constant_values=fill)


def next_ids(batch: dict[str, jax.Array], names, at: jax.Array | None = None,
             given: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
  """{name: ids of the next event's value} for the features in `names`: [b, t] teacher-forced from `batch` one
  position on (PAD where the next position is padding or another user); with `at` ([b] positions) [b, 1]:
  `given[name]` ([b] or [b, 1]) where given, else PAD."""
  if at is None:
    seg = batch[features_lib.SEGMENT_IDS]
    next_seg = next_event(seg, 0)
    same_user = (next_seg == seg) & (seg > 0)  # [b, t]: a packed row's next user is no next event
    return {n: jnp.where(same_user, next_event(batch[n], features_lib.PAD_ID), features_lib.PAD_ID) for n in names}
  given = given or {}
  b = at.shape[0]
  return {n: (jnp.asarray(given[n], jnp.int32).reshape(b, 1) if n in given
              else jnp.full((b, 1), features_lib.PAD_ID, jnp.int32)) for n in names}


class ChainInput(nn.Module):
  """h [b, t, d] and the earlier features' value embeddings ([b, t, e_i] each) -> c [b, t, d], what one
  feature's head reads: z = h + Dense(concat e_i); c = z + Mlp(RMSNorm(z)), the MLP d wide.

  Attributes:
    cfg: the ModelConfig.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h: jax.Array, values: list[jax.Array]) -> jax.Array:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    v = jnp.concatenate(values, axis=-1)  # [b, t, c]
    z = h.astype(dtype) + Dense("btc,cd->btd", (v.shape[-1], cfg.d_model), (axes.P_FEATURE, axes.P_EMBED),
                                dtype=dtype, name="values")(v)  # [b, t, d]
    mlp = Mlp(cfg.d_model, 0.0, dtype, name="mlp")
    z = z + mlp(RMSNorm(dtype=dtype, name="norm")(z), deterministic=True)
    return nn.with_logical_constraint(z, (axes.BATCH, axes.LENGTH, axes.EMBED))

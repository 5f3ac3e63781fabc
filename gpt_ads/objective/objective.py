"""The pre-training objective over the schema: sum over features of the NLL of the next event's value.

Position t predicts event t + 1 of the same user. A position is a target only when event t + 1 exists and
belongs to the same segment (user) as event t — so no user's first event is predicted, and nothing is predicted
across users in a packed row nor into padding. Each feature's NLL is averaged over its targets; the total is
the (weighted, for training) sum over features: nats per predicted event.
"""

import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model.chain import next_event
from gpt_ads.model.heads import copy_inputs, output_table
from gpt_ads.objective import losses, negatives


def targets(batch: dict[str, jax.Array], schema: features_lib.Schema):
  """-> (labels {name: [b, t]}, mask {name: [b, t] bool}) aligned with the outputs [b, t, ...] as they stand
  (the last position is never a target). The labels are shifted, not the outputs: slicing [b, t, v] logits
  would copy them, and pad their gradient back, on every step."""
  seg = batch[features_lib.SEGMENT_IDS]
  next_seg = next_event(seg, 0)
  next_is_same_user = (next_seg == seg) & (next_seg > 0)  # [b, t]
  labels = {f.name: next_event(batch[f.name], features_lib.PAD_ID) for f in schema}
  mask = {f.name: next_is_same_user & (labels[f.name] != features_lib.PAD_ID) for f in schema}
  return labels, mask


def target_counts(batch: dict[str, jax.Array], schema: features_lib.Schema) -> dict[str, jax.Array]:
  """{name: f32 [] number of targets of the feature in `batch` (at least 1, so that a mean over none is 0)}."""
  _, mask = targets(batch, schema)
  return {name: jnp.maximum(jnp.sum(m.astype(jnp.float32)), 1.0) for name, m in mask.items()}


def draw_negatives(batch: dict[str, jax.Array], rng: jax.Array, *, schema: features_lib.Schema,
                   unigram_log_q: dict[str, jax.Array]) -> dict[str, negatives.Negatives]:
  """{name: the shared negatives of every sampled feature}, drawn for `batch` (global ids) from
  fold_in(rng, the feature's index in the schema)."""
  labels, mask = targets(batch, schema)
  return {f.name: negatives.sample(jax.random.fold_in(rng, i), f, labels[f.name], mask[f.name],
                                   unigram_log_q.get(f.name))
          for i, f in enumerate(schema) if f.sampled}


def training_loss(params, outputs: dict[str, jax.Array], batch: dict[str, jax.Array],
                  negs: dict[str, negatives.Negatives], *, schema: features_lib.Schema,
                  num_targets: dict[str, jax.Array] | None = None):
  """-> (weighted total loss, {name: mean nll}). Sampled features score against `negs` (`draw_negatives`).

  Each feature's summed NLL is divided by `num_targets[name]`: by default this batch's own `target_counts`
  (a mean). When `batch` is one micro-batch of a step, pass the whole step's counts: the micro-batches' losses
  (and gradients) then add up to the mean over the step's targets, as one batch would give."""
  labels, mask = targets(batch, schema)
  num_targets = target_counts(batch, schema) if num_targets is None else num_targets
  per_feature = {}
  for f in schema:
    out = outputs[f.name]
    if f.sampled:
      table, bias = output_table(params, f)
      neg = negs[f.name]
      nll = losses.sampled_softmax(query=out, labels=labels[f.name], table=table, bias=bias, neg_ids=neg.ids,
                                   neg_log_q=neg.log_q, copy=copy_inputs(outputs, f))
    else:
      nll = losses.softmax_xent(logits=out, labels=labels[f.name])
    per_feature[f.name] = jnp.sum(nll * mask[f.name].astype(jnp.float32)) / num_targets[f.name]
  total = sum(f.weight * per_feature[f.name] for f in schema)
  return total, per_feature


def exact_nll(params, outputs: dict[str, jax.Array], batch: dict[str, jax.Array], *, schema: features_lib.Schema,
              chunk: int):
  """EXACT full-vocabulary NLL per target: -> ({name: nll [b, t]}, {name: mask [b, t] bool})."""
  labels, mask = targets(batch, schema)
  nll = {}
  for f in schema:
    out = outputs[f.name]
    if f.sampled:
      table, bias = output_table(params, f)
      nll[f.name] = losses.full_softmax_nll_chunked(query=out, labels=labels[f.name], table=table, bias=bias,
                                                    vocab_size=f.vocab_size, chunk=chunk, copy=copy_inputs(outputs, f))
    else:
      nll[f.name] = losses.softmax_xent(logits=out, labels=labels[f.name])
  return nll, mask


def exact_nll_sums(params, outputs: dict[str, jax.Array], batch: dict[str, jax.Array], *,
                   schema: features_lib.Schema, chunk: int):
  """EXACT full-vocabulary NLL for every feature: -> ({name: sum of nll}, {name: number of targets}).

  Sums (not means) so that the caller can add them over batches and hosts and divide once.
  """
  nll, mask = exact_nll(params, outputs, batch, schema=schema, chunk=chunk)
  sums = {name: jnp.sum(jnp.where(m, nll[name], 0.0)) for name, m in mask.items()}
  counts = {name: jnp.sum(m.astype(jnp.int32)) for name, m in mask.items()}
  return sums, counts

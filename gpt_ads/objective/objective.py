"""The pre-training objective over the schema: sum over features of the NLL of the next event's value.

Position t predicts event t + 1 of the same user. A position is a target only when event t + 1 exists and
belongs to the same segment (user) as event t — so no user's first event is predicted, and nothing is predicted
across users in a packed row nor into padding. Each feature's NLL is averaged over its targets; the total is
the (weighted, for training) sum over features: nats per predicted event.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gpt_ads import features as features_lib
from gpt_ads.model import axes
from gpt_ads.model.chain import next_event
from gpt_ads.model.heads import LinearLogits, copy_inputs, output_table
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


# The fused head pays from this padded vocabulary up: below it the [b, t, v] logits are small and its chunk loop
# costs more than the passes it saves (head loss + gradient alone, 2 cores, fused / logits time: v 128 1.38-1.45x,
# 256 0.70-1.49x, 512 0.57-0.72x, 4096 0.37-0.55x at d 64-256; BUILD_NOTES "The head fused with its cross-entropy").
FUSED_MIN_VOCAB = 512


def fused_softmax_xent(out: LinearLogits, labels: jax.Array, weights: jax.Array, chunk: int) -> jax.Array:
  """Σ weights · nll of an exact feature's `LinearLogits` by losses.linear_softmax_xent, per device.

  Under a mesh (jax.set_mesh) whose logical axis rules (the active nn.logical_axis_rules) shard the batch, each
  device runs the chunks of its own rows in a shard_map and the sums meet in one psum: left to the partitioner,
  the kernel's gradient, accumulated over the chunks in the loop, is all-reduced once per chunk instead (the
  largest op of the ML-1M step in a profile). The kernel enters whole (an exact head's vocabulary is small)."""
  mesh = jax.sharding.get_abstract_mesh()
  batch_axes = None if mesh.empty else nn.logical_to_mesh_axes((axes.BATCH,))[0]
  if batch_axes is None:
    return losses.linear_softmax_xent(out.inputs, out.kernel, labels, weights, chunk)
  names = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)

  def local(x, kernel, y, w):
    return jax.lax.psum(losses.linear_softmax_xent(x, kernel, y, w, chunk), names)

  rows = P(batch_axes)
  # check_vma off: the loss's scan starts its carries from constants, which the varying-axes check rejects.
  return jax.shard_map(local, mesh=mesh, in_specs=(rows, P(), rows, rows), out_specs=P(), check_vma=False)(
      out.inputs, out.kernel, labels, weights)


def training_loss(params, outputs: dict[str, jax.Array], batch: dict[str, jax.Array],
                  negs: dict[str, negatives.Negatives], *, schema: features_lib.Schema,
                  num_targets: dict[str, jax.Array] | None = None, xent_chunk: int = 0,
                  logits_dtype=jnp.float32):
  """-> (weighted total loss, {name: mean nll}). Sampled features score against `negs` (`draw_negatives`).
  Exact features take logits [b, t, v] or `LinearLogits` (the model's `logits=False`): with `xent_chunk` > 0 the
  head's matmul then runs fused with the cross-entropy, `xent_chunk` time steps at a time
  (losses.linear_softmax_xent: the same loss and gradient, without the [b, t, v] logits), for vocabularies of
  at least FUSED_MIN_VOCAB padded ids; smaller ones form their logits. Sampled features' negatives' matmul takes
  `logits_dtype` operands (ModelConfig.logits_dtype; f32 accumulation and logits).

  Each feature's summed NLL is divided by `num_targets[name]`: by default this batch's own `target_counts`
  (a mean). When `batch` is one micro-batch of a step, pass the whole step's counts: the micro-batches' losses
  (and gradients) then add up to the mean over the step's targets, as one batch would give."""
  labels, mask = targets(batch, schema)
  num_targets = target_counts(batch, schema) if num_targets is None else num_targets
  per_feature = {}
  for f in schema:
    out, weights = outputs[f.name], mask[f.name].astype(jnp.float32) / num_targets[f.name]
    if isinstance(out, LinearLogits) and xent_chunk and out.kernel.shape[-1] >= FUSED_MIN_VOCAB:
      per_feature[f.name] = fused_softmax_xent(out, labels[f.name], weights, xent_chunk)
      continue
    if f.sampled:
      table, bias = output_table(params, f)
      neg = negs[f.name]
      nll = losses.sampled_softmax(query=out, labels=labels[f.name], table=table, bias=bias, neg_ids=neg.ids,
                                   neg_log_q=neg.log_q, copy=copy_inputs(outputs, f), dtype=logits_dtype)
    else:
      logits = out.logits() if isinstance(out, LinearLogits) else out
      nll = losses.softmax_xent(logits=logits, labels=labels[f.name])
    per_feature[f.name] = jnp.sum(nll * weights)
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

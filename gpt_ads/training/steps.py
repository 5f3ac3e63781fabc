"""The pure steps the loop jits (everything static is bound with functools.partial before jit).

    train_step(state, batch, rng) -> (state, metrics)     jitted once, explicit shardings, state donated
    eval_step(params, batch)      -> (nll sums, counts)   exact full-vocabulary NLL of every feature
    evaluate(p_eval_step, ...)    -> {"loss", "per_feature", "predicted_events"} over a whole split
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_ads import features
from gpt_ads.data import pipeline
from gpt_ads.model import Model
from gpt_ads.objective import objective
from gpt_ads.training import sparse_update
from gpt_ads.training import train_state as train_state_lib


def step_gradients(params, batch: dict[str, jax.Array], rng: jax.Array, *, model: Model, unigram_log_q: dict,
                   rule_set, grad_accum_steps: int = 1, sparse_min_vocab: int = 0):
  """The loss and gradient of one step: -> (rows, (loss, {feature: loss}), gradient w.r.t. rows.gather(params)).

  `rng` is the step's key. Each micro-batch's negatives are drawn first
  (gpt_ads.objective.objective.draw_negatives, from
  the second half of its key's split; dropout from the first). With k > 1 micro-batches each feature's NLL is
  summed over them and divided by the step's number of targets (not a mean of per-micro-batch means, which
  would weigh a target by its micro-batch's size): the loss and gradient are the whole batch's, up to the
  negatives, which each micro-batch draws for itself. `rows` (gpt_ads.training.sparse_update.Rows) holds the
  rows the step reads of the per-id parameters of the sampled features with at least `sparse_min_vocab` ids
  (none when it is 0: the view is then params itself), and the gradient is taken w.r.t. that view.
  """
  schema, k = model.schema, grad_accum_steps
  # Micro-batch i takes rows i, i + k, i + 2k, ...: each shard of the batch splits locally, no resharding.
  micro = batch if k == 1 else jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
                                            batch)  # k > 1: [k, b / k, t]
  drop_rngs, negs = [], []
  for i in range(k):
    drop_rng, neg_rng = jax.random.split(rng if k == 1 else jax.random.fold_in(rng, i))
    mb = micro if k == 1 else jax.tree.map(lambda x: x[i], micro)  # noqa: B023
    drop_rngs.append(drop_rng)
    negs.append(objective.draw_negatives(mb, neg_rng, schema=schema, unigram_log_q=unigram_log_q))

  rows = sparse_update.Rows.of(params, batch, negs, schema=schema, min_vocab=sparse_min_vocab,
                               pad_multiple=model.cfg.vocab_pad_multiple)
  view_model, params = rows.model(model), rows.gather(params)
  micro, negs = rows.remap(micro), [rows.remap_negatives(n) for n in negs]

  num_targets = None if k == 1 else objective.target_counts(batch, schema)  # k > 1: the whole step's

  def loss_fn(params, mb, drop_rng, neg):
    with nn.logical_axis_rules(rule_set):
      outputs, _ = view_model.apply({"params": params}, mb, deterministic=False, rngs={"dropout": drop_rng},
                                    logits=False)
      return objective.training_loss(params, outputs, mb, neg, schema=schema, num_targets=num_targets,
                                     xent_chunk=model.cfg.xent_chunk, logits_dtype=model.cfg.logits_dtype)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if k == 1:
    return rows, *grad_fn(params, micro, drop_rngs[0], negs[0])

  def body(acc, xs):
    (l, pf), g = grad_fn(params, *xs)
    return jax.tree.map(jnp.add, acc, (l, pf, g)), None

  stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)  # noqa: E731
  zeros = jax.tree.map(jnp.zeros_like, (jnp.float32(0), {f.name: jnp.float32(0) for f in schema}, params))
  (loss, per_feature, grads), _ = jax.lax.scan(body, zeros, (micro, stack(drop_rngs), stack(negs)))
  return rows, (loss, per_feature), grads


def train_step(state: train_state_lib.TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, model: Model,
               tx: optax.GradientTransformation, lr_schedule: optax.Schedule, unigram_log_q: dict, rule_set,
               grad_accum_steps: int = 1, sparse_min_vocab: int = 0):
  """One optimizer update on `batch` (optionally accumulated over `grad_accum_steps` micro-batches).

  With `sparse_min_vocab` > 0 the sampled features with at least that many ids get row-sparse ("lazy") AdamW
  updates (gpt_ads.training.sparse_update): the gradient and optax's update run on a view of params and optimizer state
  that holds only the rows of their per-id parameters that the step reads, written back at those rows.

  metrics: the logged scalars ("train/...") plus two health entries the loop pops (gpt_ads.training.health.HEALTH_KEYS):
  "health/finite" (bool []: the loss, every feature's loss and the gradient norm are finite) and
  "health/grads_finite" (bool [parameter arrays]: each gradient array finite, in tree_leaves order).
  A non-finite step keeps params and optimizer state as they were (only the step count moves on); the loop then
  stops or goes on (config.train.on_nonfinite), so no NaN ever reaches the state.
  """
  rows, (loss, per_feature), grads = step_gradients(
      state.params, batch, jax.random.fold_in(rng, state.step), model=model, unigram_log_q=unigram_log_q,
      rule_set=rule_set, grad_accum_steps=grad_accum_steps, sparse_min_vocab=sparse_min_vocab)
  params, opt_state = rows.gather(state.params), rows.gather(state.opt_state)  # the view (the state when dense)
  updates, new_opt_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  for v in per_feature.values():
    finite &= jnp.isfinite(v)
  keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
  new_params, new_opt_state = jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state)
  metrics = {"train/loss": loss, "train/grad_norm": grad_norm, "train/learning_rate": lr_schedule(state.step)}
  metrics.update({f"train/{name}/loss": v for name, v in per_feature.items()})
  metrics["health/finite"] = finite
  metrics["health/grads_finite"] = jnp.stack([jnp.isfinite(jnp.sum(g)) for g in jax.tree.leaves(grads)])
  return state.replace(step=state.step + 1, params=rows.scatter(state.params, new_params),
                       opt_state=rows.scatter(state.opt_state, new_opt_state)), metrics


def jit_train_step(*, model: Model, tx, lr_schedule, unigram_log_q: dict, rule_set, grad_accum_steps: int,
                   state_shardings, data_sharding: jax.sharding.NamedSharding, sparse_min_vocab: int = 0):
  """`train_step` jitted once with explicit in/out shardings, donating the state."""
  batch_shardings = {k: data_sharding for k in (*model.schema.names, features.SEGMENT_IDS, features.POSITIONS)}
  replicated = jax.sharding.NamedSharding(data_sharding.mesh, jax.sharding.PartitionSpec())
  step = functools.partial(train_step, model=model, tx=tx, lr_schedule=lr_schedule, unigram_log_q=unigram_log_q,
                           rule_set=rule_set, grad_accum_steps=grad_accum_steps, sparse_min_vocab=sparse_min_vocab)
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings, replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def eval_step(params, batch: dict[str, jax.Array], *, model: Model, vocab_chunk: int, rule_set):
  """-> ({feature: summed exact NLL}, {feature: number of predicted events}) over the batch."""
  with nn.logical_axis_rules(rule_set):
    outputs, _ = model.apply({"params": params}, batch, deterministic=True)
  return objective.exact_nll_sums(params, outputs, batch, schema=model.schema, chunk=vocab_chunk)


def evaluate(p_eval_step, params, source, *, names, max_len: int, global_batch: int, data_sharding) -> dict:
  """Exact loss over every user of `source`: {"loss": nats per predicted event, "per_feature": {...}}."""
  sums, counts = None, None
  for local in pipeline.eval_batches(source, names=names, max_len=max_len, global_batch=global_batch):
    s, c = p_eval_step(params, pipeline.to_global(local, data_sharding))
    s, c = jax.device_get((s, c))
    sums = s if sums is None else jax.tree.map(np.add, sums, s)
    counts = c if counts is None else jax.tree.map(np.add, counts, c)
  per_feature = {k: float(sums[k]) / max(int(counts[k]), 1) for k in sums}
  return {"loss": float(sum(per_feature.values())), "per_feature": per_feature,
          "predicted_events": int(max(counts.values()))}



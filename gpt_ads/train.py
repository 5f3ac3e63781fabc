"""Training and evaluation: the pure train step, the exact evaluation step, and the loop around them.

    train_step(state, batch, rng) -> (state, metrics)     jitted once, explicit shardings, state donated
    eval_step(params, batch)      -> (nll sums, counts)   exact full-vocabulary NLL of every feature
    train_and_evaluate(config, workdir)                    checks -> data -> state (restored or fresh) -> loop
                                                           -> eval.json

Faults: every config / data / workdir check runs before training; a non-finite step stops (or is skipped,
gpt_ads.health) before its state is logged or saved; SIGTERM saves the current step and returns
(gpt_ads.preemption); a run killed at any point resumes from its newest intact checkpoint with the same
batches, rngs and losses (gpt_ads.checkpoint).
"""

import functools
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from gpt_ads import (accounting, api, checkpoint, config_lib, health, logbook, negatives, objective, optim,
                     preemption, sharding, sparse_update)
from gpt_ads import train_state as train_state_lib
from gpt_ads.data import datasets, pipeline
from gpt_ads.model import Model, ModelConfig


# ----------------------------------------------------------------------------------------------------------
# The steps (pure functions; everything static is bound with functools.partial before jit).
# ----------------------------------------------------------------------------------------------------------
def step_gradients(params, batch: dict[str, jax.Array], rng: jax.Array, *, model: Model, unigram_log_q: dict,
                   rule_set, grad_accum_steps: int = 1, sparse_min_vocab: int = 0):
  """The loss and gradient of one step: -> (rows, (loss, {feature: loss}), gradient w.r.t. rows.gather(params)).

  `rng` is the step's key. Each micro-batch's negatives are drawn first (gpt_ads.objective.draw_negatives, from
  the second half of its key's split; dropout from the first). With k > 1 micro-batches each feature's NLL is
  summed over them and divided by the step's number of targets (not a mean of per-micro-batch means, which
  would weigh a target by its micro-batch's size): the loss and gradient are the whole batch's, up to the
  negatives, which each micro-batch draws for itself. `rows` (gpt_ads.sparse_update.Rows) holds the
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
      outputs, _ = view_model.apply({"params": params}, mb, deterministic=False, rngs={"dropout": drop_rng})
    return objective.training_loss(params, outputs, mb, neg, schema=schema, num_targets=num_targets)

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
  updates (gpt_ads.sparse_update): the gradient and optax's update run on a view of params and optimizer state
  that holds only the rows of their per-id parameters that the step reads, written back at those rows.

  metrics: the logged scalars ("train/...") plus two health entries the loop pops (gpt_ads.health.HEALTH_KEYS):
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
  batch_shardings = {k: data_sharding for k in (*model.schema.names, "segment_ids", "positions")}
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


# ----------------------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------------------
def _close(bar, ckpt, notice, book, *, quiet: bool = False) -> None:
  """Ends the loop's helpers; the checkpointer first (it waits for a save in progress, within the grace period
  when preempted). `quiet`: an error is already on its way out; a failing close only logs."""
  bar.close()
  try:
    ckpt.close()
  except Exception:  # noqa: BLE001
    if not quiet:
      raise
    logging.exception("closing the checkpointer failed")
  finally:
    notice.close()
    book.close()


def _schema_before_loading(config):
  """The run's schema when it is known without reading or generating data (a prepared data set), else None."""
  if not config.data.dir:
    return None
  from gpt_ads.data import store
  return datasets.schema_for(store.open_dir(config.data.dir), config)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), then writes `workdir/eval.json`.

  Returns eval.json's content, or {"preempted": True, "step": N} when a SIGTERM stopped the run after saving
  checkpoint N (gpt_ads.preemption). Raises ValueError on a bad config / data / workdir (before any training),
  FloatingPointError on a non-finite step (gpt_ads.health), OSError when a checkpoint cannot be written.
  """
  config_lib.validate(config)
  config_lib.check_workdir(workdir)

  # Mesh, data, model: every check that needs no data first.
  mesh = sharding.make_mesh(config.mesh)
  rule_set = sharding.rules(config)
  config_lib.check_batch(config, sharding.data_parallel_size(mesh, rule_set))
  early_schema = _schema_before_loading(config)
  if early_schema is not None:
    config_lib.check_schema_fits(early_schema, config)
    config_lib.check_resumable(workdir, early_schema, config)
  data = datasets.load(config, workdir)
  schema = data.schema
  if early_schema is None:  # generated data: its schema is known now
    config_lib.check_resumable(workdir, schema, config, data.prepared.path)
  model = Model(schema, ModelConfig.from_config(config.model))
  tx, lr_schedule = optim.make(config.train)
  unigram_log_q = {f.name: jnp.asarray(negatives.unigram_log_probs(data.counts[f.name], f.vocab_size))
                   for f in schema.sampled if f.sampler in ("unigram", "in_batch") and f.name in data.counts}
  abstract, state_shardings = train_state_lib.abstract_and_shardings(model, tx, mesh, rule_set)
  config_lib.check_free_space(workdir, checkpoint.nbytes(abstract), keep=config.train.keep_checkpoints)
  api.save_run_file(workdir, schema, config, data.prepared.path)  # what gpt_ads.api.load needs besides checkpoints

  # State and input position: restored (state into its shardings), or created sharded.
  def report_saved(step: int) -> None:
    if jax.process_index() == 0:
      tqdm.write(f"checkpoint {step} saved", file=sys.stderr)

  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints, owner=True, on_saved=report_saved)
  with jax.set_mesh(mesh):
    state, data_state = ckpt.restore(abstract)
    if state is None:
      biases = (train_state_lib.log_prior_biases(schema, data.counts, model.cfg.vocab_pad_multiple)
                if config.train.init_output_bias == "log_prior" else {})
      state = train_state_lib.create(jax.random.key(config.seed), model, tx, state_shardings, biases)

  # Input: this process's input shards (num_shards 0 = the checkpoint's, else one per process).
  seq_len, dc = config.model.max_len, config.data
  num_shards = dc.num_shards or (data_state["num_shards"] if data_state else jax.process_count())
  train_iter = pipeline.TrainIterator(
      data.train, names=schema.names, max_len=seq_len, global_batch=config.train.batch_size, seed=dc.seed,
      num_shards=num_shards, pack=dc.pack, packing_bins=dc.packing_bins, read_threads=dc.read_threads,
      num_workers=dc.num_workers)
  if data_state is not None:
    train_iter.set_state(data_state)
  start_step = int(jax.device_get(state.step))
  if start_step:
    logging.info("resumed from the checkpoint at step %d", start_step)

  counts = accounting.param_counts(abstract.params, schema)
  flops_per_position = accounting.flops_per_position(model.cfg, schema, counts["non_embedding_params"], seq_len)
  logging.info("params: %s", counts)

  t = config.train
  on_nonfinite = t.get("on_nonfinite", "stop")
  data_sharding = sharding.batch_sharding(mesh, rule_set)
  p_train_step = jit_train_step(model=model, tx=tx, lr_schedule=lr_schedule, unigram_log_q=unigram_log_q,
                                rule_set=rule_set, grad_accum_steps=t.grad_accum_steps,
                                state_shardings=state_shardings, data_sharding=data_sharding,
                                sparse_min_vocab=t.get("sparse_update_min_vocab", 0))
  p_eval_step = jax.jit(functools.partial(eval_step, model=model, vocab_chunk=config.eval.vocab_chunk,
                                          rule_set=rule_set),
                        in_shardings=(state_shardings.params, data_sharding))
  book = logbook.Logbook(workdir, resume_step=start_step)
  rng = jax.random.key(config.seed + 1)
  monitor = health.Monitor(on_nonfinite=on_nonfinite, max_skips=t.get("max_nonfinite_skips", 10),
                           param_paths=["params/" + p for p in checkpoint.array_paths(abstract.params)])
  notice = preemption.Preemption(t.get("preemption_grace_seconds", 30.0))

  num_steps = t.num_steps
  events, train_seconds, t_last, events_last = 0, 0.0, None, 0
  bar = tqdm(total=num_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  unchecked = None  # (step, health entries, metrics) of the newest step whose health is not checked yet
  preempted = None  # the step saved on SIGTERM

  def check_health():
    nonlocal unchecked
    if unchecked is not None:
      monitor.check(*unchecked)
      unchecked = None

  try:
    with jax.set_mesh(mesh):
      for step in range(start_step, num_steps):
        local = next(train_iter)
        state, metrics = p_train_step(state, pipeline.to_global(local, data_sharding), rng)
        checks = {k: metrics.pop(k) for k in health.HEALTH_KEYS}
        check_health()  # the previous step: finished by now
        done = step + 1
        unchecked = (done, checks, metrics)
        n_events = pipeline.num_events(local) * jax.process_count()
        if t_last is None:  # the first step compiles: time from its end
          jax.block_until_ready(state.step)
          t_last, events_last = time.perf_counter(), 0
        else:
          events_last += n_events
        bar.update(1)
        if done % t.log_every == 0 or done == num_steps:
          check_health()
          m = {k: float(v) for k, v in jax.device_get(metrics).items()}
          now = time.perf_counter()
          if events_last:
            m["train/events_per_sec"] = events_last / max(now - t_last, 1e-9)
            events, train_seconds = events + events_last, train_seconds + (now - t_last)
          t_last, events_last = now, 0
          if t.eval_every and (done % t.eval_every == 0 or done == num_steps):
            val = evaluate(p_eval_step, state.params, data.val, names=schema.names, max_len=seq_len,
                           global_batch=config.eval.batch_size, data_sharding=data_sharding)
            m["eval/loss"] = val["loss"]
            m.update({f"eval/{k}/loss": v for k, v in val["per_feature"].items()})
            t_last = time.perf_counter()  # evaluation is not training time
          if on_nonfinite == "skip":
            m["train/skipped_steps"] = float(monitor.skipped)
          if done not in monitor.skipped_steps:  # a skipped step's losses are not finite: no record
            book.log(done, m)
            bar.set_postfix(loss=f"{m['train/loss']:.3f}", ev_s=f"{m.get('train/events_per_sec', 0):.0f}")
        ckpt.poll()
        stop = notice.reached(done)
        if stop or (done % t.checkpoint_every == 0 and done != num_steps):
          check_health()  # never save a state that came from a non-finite step
          ckpt.save(done, state, data_state=train_iter.global_state(), force=stop)
        if stop:
          preempted = done
          break
      else:
        check_health()
        bar.close()
        if num_steps > start_step:
          ckpt.save(num_steps, state, data_state=train_iter.global_state(), force=True)
        if notice.requested():  # SIGTERM after the last step: its checkpoint is all that is left to do
          preempted = num_steps
        else:
          test = evaluate(p_eval_step, state.params, data.test, names=schema.names, max_len=seq_len,
                          global_batch=config.eval.batch_size, data_sharding=data_sharding)
    ckpt.wait()
  except BaseException:
    _close(bar, ckpt, notice, book, quiet=True)
    raise
  _close(bar, ckpt, notice, book)
  if preempted is not None:
    return {"preempted": True, "step": preempted}

  result = {
      "step": num_steps,
      "test_loss": test["loss"],
      "test_loss_per_feature": test["per_feature"],
      "test_predicted_events": test["predicted_events"],
      "event_factorization": model.cfg.event_factorization,
      **counts,
      "flops_per_position": flops_per_position,
      "train_flops": flops_per_position * t.batch_size * seq_len * num_steps,
      "events_per_sec": events / train_seconds if train_seconds else None,
      "train_seconds": train_seconds,
      "devices": jax.device_count(),
  }
  if data.references is not None:
    ref = data.references
    result.update({k: ref[k] for k in ("bayes_factorized_loss", "bayes_joint_loss", "unigram_loss",
                                       "bayes_factorized_loss_per_feature", "unigram_loss_per_feature")})
    result["gap_closed"] = (ref["unigram_loss"] - test["loss"]) / (ref["unigram_loss"] -
                                                                    ref["bayes_factorized_loss"])
    result["gap_closed_joint"] = (ref["unigram_loss"] - test["loss"]) / (ref["unigram_loss"] -
                                                                          ref["bayes_joint_loss"])
  logbook.write_json(os.path.join(workdir, "eval.json"), result)
  return result

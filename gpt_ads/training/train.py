"""The training loop: `train_and_evaluate(config, workdir)` in four named phases.

    setup(config, workdir)      every config / data / workdir check; mesh, data, model, optimizer, run file
    restore(run)                the state and the input position: from the newest checkpoint, or fresh
    Loop(run, ...).run(state)   the steps: health checks, timing, logging, validation, checkpoints, SIGTERM
    finish(run, test, timer)    eval.json from the exact test evaluation

The steps themselves are pure functions (gpt_ads.training.steps).

Faults: every config / data / workdir check runs before training; a non-finite step stops (or is skipped,
gpt_ads.training.health) before its state is logged or saved; SIGTERM saves the current step and returns
(gpt_ads.training.preemption); a run killed at any point resumes from its newest intact checkpoint with the same
batches, rngs and losses (gpt_ads.training.checkpoint).
"""

import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
from absl import logging
from tqdm import tqdm

from gpt_ads import config_lib
from gpt_ads import model as model_lib
from gpt_ads.data import datasets, pipeline, store
from gpt_ads.model import Model
from gpt_ads.objective import negatives
from gpt_ads.training import accounting, checkpoint, health, logbook, optim, preemption, sharding, steps, workdir
from gpt_ads.training import train_state as train_state_lib


@dataclasses.dataclass
class Run:
  """What `setup` builds and checks before any step; read by every later phase."""
  config: object
  workdir: str
  mesh: jax.sharding.Mesh
  rule_set: tuple
  data: datasets.Dataset
  model: Model
  tx: object  # the optax transformation
  lr_schedule: object
  unigram_log_q: dict  # {sampled feature: [v] log q} for the unigram / in-batch samplers
  abstract: train_state_lib.TrainState  # the state's shapes and dtypes
  state_shardings: train_state_lib.TrainState
  data_sharding: jax.sharding.Sharding
  counts: dict  # parameter counts (gpt_ads.training.accounting)
  flops_per_position: float

  @property
  def schema(self):
    return self.data.schema


def _schema_before_loading(config):
  """The run's schema when it is known without reading or generating data (a prepared data set), else None."""
  if not config.data.dir:
    return None
  return datasets.schema_for(store.open_dir(config.data.dir), config)


def setup(config, run_dir: str) -> Run:
  """Phase 1: every check that needs no data first, then data, model, optimizer, state shapes, the run file."""
  config_lib.validate(config)
  workdir.check_workdir(run_dir)
  mesh = sharding.make_mesh(config.mesh)
  rule_set = sharding.rules(config)
  config_lib.check_batch(config, sharding.data_parallel_size(mesh, rule_set))
  early_schema = _schema_before_loading(config)
  if early_schema is not None:
    config_lib.check_schema_fits(early_schema, config)
    workdir.check_resumable(run_dir, early_schema, config)
  data = datasets.load(config, run_dir)
  schema = data.schema
  if early_schema is None:  # generated data: its schema is known now
    workdir.check_resumable(run_dir, schema, config, data.prepared.path)
  model = model_lib.from_config(schema, config)
  tx, lr_schedule = optim.make(config.train)
  unigram_log_q = {f.name: jnp.asarray(negatives.unigram_log_probs(data.counts[f.name], f.vocab_size))
                   for f in schema.sampled if f.sampler in ("unigram", "in_batch") and f.name in data.counts}
  abstract, state_shardings = train_state_lib.abstract_and_shardings(model, tx, mesh, rule_set)
  workdir.check_free_space(run_dir, checkpoint.nbytes(abstract), keep=config.train.keep_checkpoints)
  workdir.save_run_file(run_dir, schema, config, data.prepared.path)  # what gpt_ads.api.load reads
  counts = accounting.param_counts(abstract.params, schema)
  flops = accounting.flops_per_position(model.cfg, schema, counts["non_embedding_params"], config.model.max_len)
  logging.info("params: %s", counts)
  return Run(config=config, workdir=run_dir, mesh=mesh, rule_set=rule_set, data=data, model=model, tx=tx,
             lr_schedule=lr_schedule, unigram_log_q=unigram_log_q, abstract=abstract,
             state_shardings=state_shardings, data_sharding=sharding.batch_sharding(mesh, rule_set), counts=counts,
             flops_per_position=flops)


def _report_saved(step: int) -> None:
  if jax.process_index() == 0:
    tqdm.write(f"checkpoint {step} saved", file=sys.stderr)


def restore(run: Run):
  """Phase 2: -> (checkpointer, state, train iterator). The state is restored into its shardings (or created
  sharded) and the input position with it. Input shards: config.data.num_shards; 0 = the checkpoint's, else one
  per process."""
  config, schema = run.config, run.schema
  ckpt = checkpoint.Checkpointer(run.workdir, keep=config.train.keep_checkpoints, owner=True,
                                 on_saved=_report_saved)
  with jax.set_mesh(run.mesh):
    state, data_state = ckpt.restore(run.abstract)
    if state is None:
      biases = (train_state_lib.log_prior_biases(schema, run.data.counts, run.model.cfg.vocab_pad_multiple)
                if config.train.init_output_bias == "log_prior" else {})
      state = train_state_lib.create(jax.random.key(config.seed), run.model, run.tx, run.state_shardings, biases)
  dc = config.data
  num_shards = dc.num_shards or (data_state["num_shards"] if data_state else jax.process_count())
  train_iter = pipeline.TrainIterator(
      run.data.train, names=schema.names, max_len=config.model.max_len, global_batch=config.train.batch_size,
      seed=dc.seed, num_shards=num_shards, pack=dc.pack, packing_bins=dc.packing_bins,
      read_threads=dc.read_threads, num_workers=dc.num_workers)
  if data_state is not None:
    train_iter.set_state(data_state)
  return ckpt, state, train_iter


class Timer:
  """Training events and seconds, lapped at log steps; the first step (it compiles) is not timed."""

  def __init__(self):
    self.events, self.seconds = 0, 0.0
    self._last, self._pending = None, 0

  def step(self, state, events: int) -> None:
    if self._last is None:  # the first step compiles: time from its end
      jax.block_until_ready(state.step)
      self._last, self._pending = time.perf_counter(), 0
    else:
      self._pending += events

  def lap(self) -> float | None:
    """-> events/s since the previous lap (None when no timed step ran since)."""
    now = time.perf_counter()
    rate = None
    if self._pending:
      rate = self._pending / max(now - self._last, 1e-9)
      self.events, self.seconds = self.events + self._pending, self.seconds + (now - self._last)
    self._last, self._pending = now, 0
    return rate

  def restart(self) -> None:
    """After work that is not training (validation): the clock restarts."""
    self._last = time.perf_counter()


class Loop:
  """Phase 3: the steps from `start_step` to config.train.num_steps. A step's health is checked once the next
  step is dispatched (it has finished by then: no device sync per step), and always before the state is logged
  or saved."""

  def __init__(self, run: Run, ckpt, train_iter, p_eval_step, start_step: int):
    t = run.config.train
    self.run_, self.ckpt, self.train_iter, self.p_eval_step = run, ckpt, train_iter, p_eval_step
    self.p_train_step = steps.jit_train_step(
        model=run.model, tx=run.tx, lr_schedule=run.lr_schedule, unigram_log_q=run.unigram_log_q,
        rule_set=run.rule_set, grad_accum_steps=t.grad_accum_steps, state_shardings=run.state_shardings,
        data_sharding=run.data_sharding, sparse_min_vocab=config_lib.option(t, "sparse_update_min_vocab"))
    self.book = logbook.Logbook(run.workdir, resume_step=start_step)
    self.monitor = health.Monitor(on_nonfinite=config_lib.option(t, "on_nonfinite"),
                                  max_skips=config_lib.option(t, "max_nonfinite_skips"),
                                  param_paths=["params/" + p for p in checkpoint.array_paths(run.abstract.params)])
    self.notice = preemption.Preemption(config_lib.option(t, "preemption_grace_seconds"))
    self.bar = tqdm(total=t.num_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                    disable=jax.process_index() != 0)
    self.timer = Timer()
    self.start_step = start_step
    self._unchecked = None  # (step, health entries, metrics) of the newest step whose health is not checked yet

  def _check_health(self) -> None:
    if self._unchecked is not None:
      self.monitor.check(*self._unchecked)
      self._unchecked = None

  def _log(self, done: int, state, metrics: dict) -> None:
    run, t = self.run_, self.run_.config.train
    self._check_health()
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    rate = self.timer.lap()
    if rate is not None:
      m["train/events_per_sec"] = rate
    if t.eval_every and (done % t.eval_every == 0 or done == t.num_steps):
      val = steps.evaluate(self.p_eval_step, state.params, run.data.val, names=run.schema.names,
                           max_len=run.config.model.max_len, global_batch=run.config.eval.batch_size,
                           data_sharding=run.data_sharding)
      m["eval/loss"] = val["loss"]
      m.update({f"eval/{k}/loss": v for k, v in val["per_feature"].items()})
      self.timer.restart()  # evaluation is not training time
    if config_lib.option(t, "on_nonfinite") == "skip":
      m["train/skipped_steps"] = float(self.monitor.skipped)
    if done not in self.monitor.skipped_steps:  # a skipped step's losses are not finite: no record
      self.book.log(done, m)
      self.bar.set_postfix(loss=f"{m['train/loss']:.3f}", ev_s=f"{m.get('train/events_per_sec', 0):.0f}")

  def run(self, state):
    """-> (state, the step saved on SIGTERM or None). The last step's checkpoint is saved here too."""
    run, t = self.run_, self.run_.config.train
    rng = jax.random.key(run.config.seed + 1)
    for step in range(self.start_step, t.num_steps):
      local = next(self.train_iter)
      state, metrics = self.p_train_step(state, pipeline.to_global(local, run.data_sharding), rng)
      checks = {k: metrics.pop(k) for k in health.HEALTH_KEYS}
      self._check_health()  # the previous step: finished by now
      done = step + 1
      self._unchecked = (done, checks, metrics)
      self.timer.step(state, pipeline.num_events(local) * jax.process_count())
      self.bar.update(1)
      if done % t.log_every == 0 or done == t.num_steps:
        self._log(done, state, metrics)
      self.ckpt.poll()
      stop = self.notice.reached(done)
      if stop or (done % t.checkpoint_every == 0 and done != t.num_steps):
        self._check_health()  # never save a state that came from a non-finite step
        self.ckpt.save(done, state, data_state=self.train_iter.global_state(), force=stop)
      if stop:
        return state, done
    self._check_health()
    self.bar.close()
    if t.num_steps > self.start_step:
      self.ckpt.save(t.num_steps, state, data_state=self.train_iter.global_state(), force=True)
    if self.notice.requested():  # SIGTERM after the last step: its checkpoint is all that is left to do
      return state, t.num_steps
    return state, None

  def close(self, *, quiet: bool = False) -> None:
    """Ends the loop's helpers; the checkpointer first (it waits for a save in progress, within the grace
    period when preempted). `quiet`: an error is already on its way out; a failing close only logs."""
    self.bar.close()
    try:
      self.ckpt.close()
    except Exception:  # noqa: BLE001
      if not quiet:
        raise
      logging.exception("closing the checkpointer failed")
    finally:
      self.notice.close()
      self.book.close()


def finish(run: Run, test: dict, timer: Timer) -> dict:
  """Phase 4: eval.json (written) from the exact test evaluation, the parameter counts and the timing."""
  config, t = run.config, run.config.train
  result = {
      "step": t.num_steps,
      "test_loss": test["loss"],
      "test_loss_per_feature": test["per_feature"],
      "test_predicted_events": test["predicted_events"],
      "event_factorization": run.model.cfg.event_factorization,
      **run.counts,
      "flops_per_position": run.flops_per_position,
      "train_flops": run.flops_per_position * t.batch_size * config.model.max_len * t.num_steps,
      "events_per_sec": timer.events / timer.seconds if timer.seconds else None,
      "train_seconds": timer.seconds,
      "devices": jax.device_count(),
  }
  if run.data.references is not None:
    ref = run.data.references
    result.update({k: ref[k] for k in ("bayes_factorized_loss", "bayes_joint_loss", "unigram_loss",
                                       "bayes_factorized_loss_per_feature", "unigram_loss_per_feature")})
    result["gap_closed"] = (ref["unigram_loss"] - test["loss"]) / (ref["unigram_loss"] -
                                                                    ref["bayes_factorized_loss"])
    result["gap_closed_joint"] = (ref["unigram_loss"] - test["loss"]) / (ref["unigram_loss"] -
                                                                          ref["bayes_joint_loss"])
  workdir.write_json(workdir.eval_file(run.workdir), result)
  return result


def train_and_evaluate(config, run_dir: str) -> dict:
  """Trains `config` in `run_dir` (resuming from its latest checkpoint), then writes its eval.json.

  Returns eval.json's content, or {"preempted": True, "step": N} when a SIGTERM stopped the run after saving
  checkpoint N (gpt_ads.training.preemption). Raises ValueError on a bad config / data / workdir (before any
  training), FloatingPointError on a non-finite step (gpt_ads.training.health), OSError when a checkpoint cannot
  be written.
  """
  run = setup(config, run_dir)
  ckpt, state, train_iter = restore(run)
  start_step = int(jax.device_get(state.step))
  if start_step:
    logging.info("resumed from the checkpoint at step %d", start_step)
  p_eval_step = jax.jit(functools.partial(steps.eval_step, model=run.model, vocab_chunk=config.eval.vocab_chunk,
                                          rule_set=run.rule_set),
                        in_shardings=(run.state_shardings.params, run.data_sharding))
  loop = Loop(run, ckpt, train_iter, p_eval_step, start_step)
  try:
    with jax.set_mesh(run.mesh):
      state, preempted = loop.run(state)
      test = None
      if preempted is None:
        test = steps.evaluate(p_eval_step, state.params, run.data.test, names=run.schema.names,
                              max_len=config.model.max_len, global_batch=config.eval.batch_size,
                              data_sharding=run.data_sharding)
    ckpt.wait()
  except BaseException:
    loop.close(quiet=True)
    raise
  loop.close()
  if preempted is not None:
    return {"preempted": True, "step": preempted}
  return finish(run, test, loop.timer)

"""Orbax checkpoints in `workdir/checkpoints` (asynchronous, keeping the newest N), verified on restore.

Each checkpoint holds three items: "state" (the TrainState, restored straight into the target shardings, so a
checkpoint restores onto any mesh), "data" (the training input position of every input shard, JSON; see
gpt_ads.data.pipeline.TrainIterator) and "integrity" (JSON: one checksum per state array, see `fingerprint`).

Integrity:
  - Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only when every item
    is on disk, so a process killed mid-write leaves no checkpoint that looks complete (the temporary
    directory is removed when the next run starts). `saved_step` / `poll` report a step only after that rename.
  - A state holding NaN / Inf is never written: `save` raises FloatingPointError naming the arrays.
  - `restore` recomputes the checksums of what it read; a checkpoint that fails to read or does not match them
    (truncated, flipped bytes, missing files) is reported, moved to `workdir/checkpoints_corrupt/`, and the
    next older one is tried. Resume order: the newest good checkpoint, else a fresh init; if checkpoints exist
    but none is readable, an error (a silent restart from scratch would throw away the run).
"""

import os
import signal
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from gpt_ads.training import workdir as workdir_lib

CORRUPT_DIR = "checkpoints_corrupt"
# Test-only fault injection: "1" = SIGKILL this process while its first asynchronous save is being written
# (tests/e2e/fault_test.py uses it to land a kill inside the write window, which is too short to hit from outside).
KILL_DURING_SAVE_ENV = "GPT_ADS_TEST_KILL_DURING_SAVE"


def _path_name(path) -> str:
  """'params/heads/ad_id/bias' for a jax key path."""
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def array_paths(tree) -> list[str]:
  """The names of a pytree's arrays ('heads/ad_id/bias', ...), in tree_leaves order."""
  return [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def nbytes(tree) -> int:
  """Bytes of a pytree of arrays or ShapeDtypeStructs (one uncompressed checkpoint of it)."""
  return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


@jax.jit
def _checksums(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(uint32 [n] checksum of each array's bits, bool [n] whether each array is all finite).

  checksum = sum_i bits(x_i) * (2i + 1) mod 2^32: integer arithmetic, so the same on any mesh and sharding, and
  any single changed element changes it (its weight is odd, hence invertible mod 2^32).
  """
  sums, finite = [], []
  for x in leaves:
    if x.dtype == jnp.bool_:
      bits = x.astype(jnp.uint32)
    else:
      width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
      bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    weights = (jnp.arange(x.size, dtype=jnp.uint32) * 2 + 1).reshape(x.shape)
    sums.append(jnp.sum(bits * weights, dtype=jnp.uint32))
    finite.append(jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.bool_(True))
  return jnp.stack(sums), jnp.stack(finite)


def fingerprint(state) -> tuple[dict[str, int], list[str]]:
  """-> ({array path: checksum}, [paths of arrays holding NaN / Inf]) of a (sharded) pytree of arrays."""
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  sums, finite = jax.device_get(_checksums([x for _, x in flat]))
  names = [_path_name(p) for p, _ in flat]
  return dict(zip(names, map(int, sums))), [n for n, ok in zip(names, finite) if not ok]


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}"


class Checkpointer:
  """Attributes:
    manager: the orbax CheckpointManager; directory: where the checkpoints are.
    saved_step: the newest step whose checkpoint is complete on disk (None before the first).
  """

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True, owner: bool = False,
               on_saved: Callable[[int], None] | None = None):
    """`owner`: this process trains the run (readers such as gpt_ads.api leave the directory as it is): it
    removes temporary directories of unfinished saves at start and moves corrupt checkpoints aside.
    `on_saved(step)` is called once per checkpoint, when it is complete on disk."""
    self.directory = workdir_lib.checkpoint_dir(os.path.abspath(workdir))
    self.owner = owner
    self.on_saved = on_saved
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=owner,
                                             enable_async_checkpointing=async_save))
    self.saved_step = self.manager.latest_step()
    self._pending: int | None = None  # step of a save that may still be writing
    self._kill_during_save = os.environ.get(KILL_DURING_SAVE_ENV) == "1"

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the checkpoints kept in the directory, ascending."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, *, data_state: dict | None = None, force: bool = False) -> bool:
    """Starts saving `state` (and `data_state`, the input position of every shard) as checkpoint `step`.

    Raises FloatingPointError (and writes nothing) if the state holds NaN / Inf. Returns at once; the
    checkpoint counts as saved when `poll` / `wait` say so.
    """
    checksums, bad = fingerprint(state)
    if bad:
      raise FloatingPointError(f"step {step}: the train state holds NaN/Inf in {', '.join(bad[:4])}"
                               f"{' ...' if len(bad) > 4 else ''}; not saving it (the last good checkpoint is "
                               f"step {self.saved_step}); lower config.train.learning_rate or check the data")
    self.wait()  # the previous save first (orbax would wait for it anyway): reported, or its failure raised
    args = {"state": ocp.args.StandardSave(state), "integrity": ocp.args.JsonSave({"checksums": checksums})}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    started = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    if started:
      self._pending = step
      if self._kill_during_save:
        os.kill(os.getpid(), signal.SIGKILL)
    return started

  def poll(self) -> int | None:
    """The step of a save that completed since the last call (None if none did); raises OSError if one failed."""
    if self._pending is None or self.manager.is_saving_in_progress():
      return None
    step, self._pending = self._pending, None
    self.manager.reload()
    if step not in self.manager.all_steps():
      raise OSError(f"checkpoint {step} was not written to {self.directory} (see the errors above); check its "
                    "free space and permissions")
    self.saved_step = step
    logging.info("checkpoint %d saved", step)
    if self.on_saved is not None:
      self.on_saved(step)
    return step

  def wait(self) -> int | None:
    """Blocks until a save in progress is complete; -> its step (None if there was none)."""
    self.manager.wait_until_finished()
    return self.poll()

  def restore(self, abstract_state, step: int | None = None) -> tuple[object, dict | None]:
    """-> (state restored into the shardings of `abstract_state`, saved input position or None).

    (None, None) when there is no checkpoint. `step` None: the newest checkpoint that reads back intact
    (unreadable or corrupt newer ones are reported, and moved aside by an `owner`); an explicit `step` must be
    intact.
    """
    if step is not None:
      return self._restore_verified(abstract_state, step)
    steps = sorted(self.manager.all_steps(), reverse=True)
    bad = []
    for s in steps:
      try:
        result = self._restore_verified(abstract_state, s)
      except Exception as e:  # noqa: BLE001 - a damaged checkpoint can fail anywhere in orbax / tensorstore
        ok, reason = False, _one_line(e)
      else:
        ok, reason = True, ""
      if jax.process_count() > 1:  # every process must resume from the same step
        from jax.experimental import multihost_utils
        ok = bool(np.all(multihost_utils.process_allgather(np.int32(ok))))
        reason = reason or "unreadable on another process"
      if ok:
        if bad and self.owner:
          self._quarantine(bad)
        return result
      logging.warning("checkpoint %d in %s is unreadable or corrupt (%s); trying the previous one", s,
                      self.directory, reason)
      bad.append((s, reason))
    if bad:
      reasons = "; ".join(f"step {s}: {r}" for s, r in bad)
      raise ValueError(f"no checkpoint in {self.directory} reads back intact ({reasons}); move {self.directory} "
                       "away to start the run over")
    return None, None

  def _restore_verified(self, abstract_state, step: int):
    step_dir = os.path.join(self.directory, str(step))
    items = set(os.listdir(step_dir)) if os.path.isdir(step_dir) else set()
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    for name in ("data", "integrity"):
      if name in items:
        args[name] = ocp.args.JsonRestore()
    if "data" not in items:
      logging.warning("checkpoint %d has no input position; the input pipeline starts from the beginning", step)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    state = restored["state"]
    if "integrity" in items:  # checkpoints written before checksums existed are taken as they are
      expected = restored["integrity"]["checksums"]
      got, _ = fingerprint(state)
      wrong = [k for k in expected if got.get(k) != expected[k]] + sorted(set(got) - set(expected))
      if wrong:
        raise ValueError(f"{len(wrong)} array(s) do not match their checksums, e.g. {wrong[0]}")
    return state, (restored["data"] if "data" in items else None)

  def _quarantine(self, bad: list[tuple[int, str]]) -> None:
    """Moves unreadable checkpoints to workdir/checkpoints_corrupt/ (kept for inspection, out of orbax's way)."""
    target = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
    if jax.process_index() == 0:
      os.makedirs(target, exist_ok=True)
      for s, reason in bad:
        dest = os.path.join(target, f"{s}-{int(time.time())}")
        os.replace(os.path.join(self.directory, str(s)), dest)
        print(f"gpt-ads-train: checkpoint {s} is corrupt ({reason}); moved to {dest}, resuming from an older one",
              file=sys.stderr, flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("gpt_ads_checkpoint_quarantine")
    self.manager.reload()

  def close(self):
    self.manager.wait_until_finished()
    try:
      self.poll()
    finally:
      self.manager.close()

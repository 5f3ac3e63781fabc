"""Orbax checkpoints in `workdir/checkpoints` (asynchronous, keeping the newest N).

Each checkpoint holds two items: "state" (the TrainState, restored straight into the target shardings, so a
checkpoint restores onto any mesh) and "data" (the training input iterator's position, one JSON file per
process, written by grain's orbax handler). Resume order: the latest checkpoint in the workdir, else a fresh init.
"""

import json
import os

import grain
import orbax.checkpoint as ocp
from absl import logging


class _FrozenIteratorState:
  """The iterator's state captured when `save` is called (the asynchronous write happens later)."""

  def __init__(self, state: dict):
    self._state = json.dumps(state, indent=1).encode()

  def get_state(self) -> bytes:
    return self._state


class Checkpointer:
  """Attributes:
    manager: the orbax CheckpointManager; directory: where the checkpoints are.
  """

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, *, data_iterator=None, force: bool = False) -> bool:
    """Saves `state` (and the position of `data_iterator`, a grain DatasetIterator) as checkpoint `step`."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator.get_state()))
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, abstract_state, *, data_iterator=None, step: int | None = None):
    """Restores `step` (default: latest) into the shardings of `abstract_state`; None if there is none.

    `data_iterator`, when given, is moved to the saved input position (when the checkpoint has one).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      if os.path.isdir(os.path.join(self.directory, str(step), "data")):
        args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      else:
        logging.warning("checkpoint %d has no input position; the input pipeline starts from the beginning", step)
    return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

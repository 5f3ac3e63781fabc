"""Orbax checkpoints in `workdir/checkpoints` (asynchronous, keeping the newest N).

Each checkpoint holds two items: "state" (the TrainState, restored straight into the target shardings, so a
checkpoint restores onto any mesh) and "data" (the training input position of every input shard, JSON; see
gpt_ads.data.pipeline.TrainIterator). Resume order: the latest checkpoint in the workdir, else a fresh init.
"""

import os

import orbax.checkpoint as ocp
from absl import logging


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

  def save(self, step: int, state, *, data_state: dict | None = None, force: bool = False) -> bool:
    """Saves `state` (and `data_state`, the input position of every shard) as checkpoint `step`."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, abstract_state, step: int | None = None) -> tuple[object, dict | None]:
    """-> (state restored into the shardings of `abstract_state`, saved input position or None).

    (None, None) when there is no checkpoint; step defaults to the latest.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None, None
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    else:
      logging.warning("checkpoint %d has no input position; the input pipeline starts from the beginning", step)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], (restored["data"] if has_data else None)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

"""Orbax checkpoints of the TrainState in `workdir/checkpoints` (asynchronous, keeping the newest N).

Resume order: the latest checkpoint in the workdir, else a fresh init. Restores go straight into the target
shardings (the abstract state carries them), so a checkpoint restores onto any mesh.
"""

import os

import orbax.checkpoint as ocp


class Checkpointer:
  """Attributes:
    manager: the orbax CheckpointManager.
  """

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, *, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: latest) into the shardings of `abstract_state`; None if there is none."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

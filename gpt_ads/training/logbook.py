"""Where numbers go: `workdir/metrics.jsonl` (one JSON object per log step), TensorBoard summaries in the
workdir, and `workdir/eval.json`. Only process 0 writes. Files are written whole (temp file + rename) or
appended line by line; a resumed run drops the records past its checkpoint and any line a killed process left
half-written, so metrics.jsonl holds each step once.
"""

import json
import math
import os

from gpt_ads.training import workdir as workdir_lib


def _step(line: str) -> float:
  """The step of a metrics.jsonl line; inf for a line a killed process left half-written (it is dropped)."""
  try:
    return json.loads(line)["step"] if line.endswith("\n") else math.inf
  except (ValueError, KeyError, TypeError):
    return math.inf


class Logbook:
  """Attributes:
    workdir: the run directory.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.workdir = workdir
    self._tb = None
    if not workdir_lib.is_writer():
      return
    path = workdir_lib.metrics_file(workdir)
    if os.path.exists(path):  # drop records past the step we resume from (they will be logged again)
      with open(path, errors="replace") as f:
        keep = [line for line in f if _step(line) <= resume_step]
      with open(path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(path + ".tmp", path)
    from tensorboardX import SummaryWriter  # no TensorFlow needed
    self._tb = SummaryWriter(os.path.join(workdir, workdir_lib.TENSORBOARD))

  def log(self, step: int, metrics: dict[str, float]) -> None:
    """Appends one record; raises if a loss is not finite (so no NaN run goes on silently)."""
    bad = [k for k, v in metrics.items() if "loss" in k and not math.isfinite(v)]
    if bad:
      raise FloatingPointError(f"step {step}: non-finite {', '.join(bad)} = "
                               f"{[metrics[k] for k in bad]}; lower config.train.learning_rate or check the data")
    if not workdir_lib.is_writer():
      return
    with open(workdir_lib.metrics_file(self.workdir), "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    for k, v in metrics.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()

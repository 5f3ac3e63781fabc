"""Non-finite training steps: stop with a message naming the step and what went non-finite, or skip the update.

The train step reports two health entries (gpt_ads.training.steps.train_step): "health/finite" (bool []) and
"health/grads_finite" (bool [parameter arrays]). The loop hands every step's entries to `Monitor.check`, one step
late (by then that step has finished, so reading a bool does not stall the dispatch of the next one), and always
before a state is logged or saved.

The step itself never lets a NaN into the state: a non-finite step keeps params and optimizer state as they were.
What happens next is the config's choice:
    config.train.on_nonfinite = "stop"   FloatingPointError: "step 17: non-finite train/ad_id/loss=nan ..."
    config.train.on_nonfinite = "skip"   a warning and training goes on (that batch is skipped); after
                                         config.train.max_nonfinite_skips in a row, the same error
"""

import jax
import numpy as np
from absl import logging

HEALTH_KEYS = ("health/finite", "health/grads_finite")
MODES = ("stop", "skip")


class Monitor:
  """Attributes:
    skipped: steps skipped so far (this process's run); consecutive: skipped in a row up to the last check.
  """

  def __init__(self, *, on_nonfinite: str, max_skips: int, param_paths: list[str]):
    """param_paths: names of the parameter arrays in tree_leaves order (for "gradient non-finite in ...")."""
    self.on_nonfinite, self.max_skips, self.param_paths = on_nonfinite, max_skips, param_paths
    self.skipped = self.consecutive = 0
    self.skipped_steps: set[int] = set()

  def check(self, step: int, health: dict, metrics: dict) -> bool:
    """Whether `step` (the step count after its update, as logged) was finite; raises if training must stop."""
    if bool(jax.device_get(health["health/finite"])):
      self.consecutive = 0
      return True
    what = self.describe(step, health, metrics)
    if self.on_nonfinite == "skip":
      self.skipped += 1
      self.consecutive += 1
      self.skipped_steps.add(step)
      if self.consecutive > self.max_skips:
        raise FloatingPointError(f"{what}; {self.consecutive} steps in a row were non-finite (more than "
                                 f"config.train.max_nonfinite_skips={self.max_skips}); lower "
                                 "config.train.learning_rate or check the data")
      logging.warning("%s; update skipped (config.train.on_nonfinite='skip')", what)
      return False
    raise FloatingPointError(f"{what}; training stopped before that state was saved; lower "
                             "config.train.learning_rate, check the data, or set config.train.on_nonfinite=skip")

  def describe(self, step: int, health: dict, metrics: dict) -> str:
    """'step 17: non-finite train/ad_id/loss=nan, train/loss=nan; gradient non-finite in params/...'."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = [f"{k}={v}" for k, v in sorted(values.items(), key=lambda kv: (kv[0] == "train/loss", kv[0]))
           if k.endswith("loss") and not np.isfinite(v)]
    grads = np.asarray(jax.device_get(health["health/grads_finite"]))
    bad_params = [p for p, ok in zip(self.param_paths, grads) if not ok]
    text = f"step {step}: non-finite " + (", ".join(bad) if bad else f"train/grad_norm={values['train/grad_norm']}")
    if bad_params:
      text += (f"; gradient non-finite in {', '.join(bad_params[:3])}"
               f"{f' and {len(bad_params) - 3} more' if len(bad_params) > 3 else ''}")
    return text

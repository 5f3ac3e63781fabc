"""Preemption: on SIGTERM the trainer finishes its current step, saves a checkpoint there and exits 0.

    notice = Preemption(grace_seconds=30)      # installs the handler (one process) or uses JAX's (several)
    ... after each step:  if notice.reached(step): save(step); wait; exit 0
    notice.close()                             # restores the previous SIGTERM handler

One process: a Python SIGTERM handler records the notice. Several processes (jax.distributed): JAX's
preemption service (on by default) owns SIGTERM and spreads the notice to every host; all of them call
`multihost_utils.reached_preemption_sync_point(step)` after every step and it turns True at the same step on all,
so every host saves the same step (a Python handler would replace JAX's and leave the others running).

Grace period: from the notice (or, with JAX's service, from the sync point) the process has `grace_seconds`
to save and exit; past that a watchdog thread ends it with exit status EXIT_GRACE_EXCEEDED and a one-line error
(the run then resumes from the previous complete checkpoint).
"""

import os
import signal
import sys
import threading
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

EXIT_GRACE_EXCEEDED = 3


def _preemption_sync() -> bool:
  """Whether JAX's preemption sync service runs: jax.distributed creates it at initialize when
  jax_enable_preemption_service is on (public equivalents of its internal `preemption_sync_manager`)."""
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class Preemption:
  """Attributes:
    grace_seconds: time allowed from the notice to the exit.
    noticed_at: time.monotonic() of the SIGTERM (None before one; JAX's service: of the sync point).
  """

  def __init__(self, grace_seconds: float):
    self.grace_seconds = float(grace_seconds)
    self.noticed_at: float | None = None
    self._watchdog: threading.Timer | None = None
    self._previous = None
    self._installed = False
    self._jax_service = jax.process_count() > 1
    if self._jax_service:
      if not _preemption_sync():
        logging.warning("jax_enable_preemption_service is off: SIGTERM ends this multi-process run without a "
                        "checkpoint (it resumes from the last periodic one)")
      return
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    else:
      logging.warning("not on the main thread: SIGTERM is not handled (no checkpoint on preemption)")

  def _on_sigterm(self, signum, frame) -> None:
    if self.noticed_at is None:
      self.noticed_at = time.monotonic()
      print("gpt-ads-train: SIGTERM: finishing this step, then saving a checkpoint and exiting", file=sys.stderr,
            flush=True)
      self._start_watchdog()

  def _start_watchdog(self) -> None:
    if self._watchdog is not None:
      return
    remaining = max(self.grace_seconds - (time.monotonic() - self.noticed_at), 0.0)
    self._watchdog = threading.Timer(remaining, self._expire)
    self._watchdog.daemon = True
    self._watchdog.start()

  def _expire(self) -> None:
    print(f"gpt-ads-train: error: preempted, but the checkpoint was not complete within "
          f"config.train.preemption_grace_seconds={self.grace_seconds:g}; the run resumes from the previous "
          "complete checkpoint (raise the grace period if the scheduler allows)", file=sys.stderr, flush=True)
    os._exit(EXIT_GRACE_EXCEEDED)

  def reached(self, step: int) -> bool:
    """Whether to save at `step` and stop (call after every step; on several processes, every process must)."""
    if self._jax_service:
      if not _preemption_sync():
        return False
      if not multihost_utils.reached_preemption_sync_point(step):
        return False
      if self.noticed_at is None:
        self.noticed_at = time.monotonic()
        self._start_watchdog()
      return True
    return self.noticed_at is not None

  def requested(self) -> bool:
    """Whether this process has a preemption notice (no collective; one process: a SIGTERM arrived)."""
    return self.noticed_at is not None

  def close(self) -> None:
    """Cancels the watchdog and restores the previous SIGTERM handler."""
    if self._watchdog is not None:
      self._watchdog.cancel()
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
      self._installed = False

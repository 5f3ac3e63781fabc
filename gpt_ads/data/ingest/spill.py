"""The external sort of gpt-ads-prepare: encoded events spilled to disk as sorted runs, read back by user range.

Memory is bounded by `PrepareOptions.spill_events` (events held at once), not by the log: read batches are
gathered into a run of up to that many events, sorted by (user code, time) (stable: ties keep file order) and
written to a temporary directory as one .npy file per column. `Runs.partitions` then cuts the user codes into
ranges of at most that many events (a user with more is a range of its own) and, for each range, reads its
slice of every run (memory-mapped: a run is sorted by user, so the slice is contiguous) and merges them by a
stable sort: runs come in file order, so ties in time still keep file order.

Per event on disk: int32 user code, int64 time, int32 per feature (and one bit of --test_input origin per run).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np


@dataclasses.dataclass
class Part:
  """Events of a range of user codes, sorted by (user, time), file order within ties.

  Attributes:
    user: int32 [n]; time: int64 [n] ns; values: {column: int32 [n]} value codes; from_test: bool [n] whether
    the row came from --test_input.
  """
  user: np.ndarray
  time: np.ndarray
  values: dict[str, np.ndarray]
  from_test: np.ndarray


class Runs:
  """Sorted runs of encoded events in a temporary directory next to `output` (removed by `close`)."""

  def __init__(self, output: str, columns: list[str], spill_events: int):
    self.columns, self.spill_events = list(columns), int(spill_events)
    output = os.path.abspath(output)
    self.dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.spill-", dir=os.path.dirname(output))
    self._runs: list[tuple[str, bool, int]] = []  # (directory, from --test_input, events)
    self._pending: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
    self._pending_events, self._pending_test = 0, False
    self.user_events = np.zeros(0, np.int64)  # [user codes] events per user code over every run

  def add(self, user: np.ndarray, time: np.ndarray, values: dict[str, np.ndarray], from_test: bool) -> None:
    """Appends a batch of events (file order); a run is written once `spill_events` are pending."""
    if from_test != self._pending_test:
      self.flush()
      self._pending_test = from_test
    self._pending.append((user, time, values))
    self._pending_events += len(user)
    if self._pending_events >= self.spill_events:
      self.flush()

  def flush(self) -> None:
    """Sorts the pending events and writes them as a run."""
    if not self._pending_events:
      self._pending = []
      return
    user = np.concatenate([p[0] for p in self._pending])
    time = np.concatenate([p[1] for p in self._pending])
    order = np.lexsort((time, user))  # stable: ties keep file order
    path = os.path.join(self.dir, f"run-{len(self._runs):05d}")
    os.makedirs(path)
    np.save(os.path.join(path, "user.npy"), user[order])
    np.save(os.path.join(path, "time.npy"), time[order])
    for c in self.columns:
      np.save(os.path.join(path, f"{c}.npy"), np.concatenate([p[2][c] for p in self._pending])[order])
    counts = np.bincount(user, minlength=len(self.user_events))
    counts[:len(self.user_events)] += self.user_events
    self.user_events = counts
    self._runs.append((path, self._pending_test, len(user)))
    self._pending, self._pending_events = [], 0

  def ranges(self) -> list[tuple[int, int]]:
    """[lo, hi) user-code ranges of at most spill_events events each (one user at least), in code order."""
    ends = np.cumsum(self.user_events)
    out, lo = [], 0
    while lo < len(ends):
      base = ends[lo - 1] if lo else 0
      hi = max(int(np.searchsorted(ends, base + self.spill_events, side="right")), lo + 1)
      out.append((lo, hi))
      lo = hi
    return out

  def partitions(self):
    """Yields ((lo, hi), Part) for each user-code range of `ranges`, in code order."""
    self.flush()
    for lo, hi in self.ranges():
      pieces = []
      for path, from_test, _ in self._runs:
        user = np.load(os.path.join(path, "user.npy"), mmap_mode="r")
        a, b = np.searchsorted(user, [lo, hi])
        if b > a:
          pieces.append((path, from_test, a, b))
      if not pieces:  # only users whose every row was dropped
        continue
      load = lambda name: np.concatenate([np.load(os.path.join(p, f"{name}.npy"), mmap_mode="r")[a:b]
                                          for p, _, a, b in pieces])
      user, time = load("user"), load("time")
      order = np.lexsort((time, user))  # pieces are in file order, so stable ties still keep it
      from_test = np.concatenate([np.full(b - a, t) for _, t, a, b in pieces])
      yield (lo, hi), Part(user=user[order], time=time[order], values={c: load(c)[order] for c in self.columns},
                           from_test=from_test[order])

  @property
  def events(self) -> int:
    return int(self.user_events.sum()) + self._pending_events

  def close(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)

"""The external sort of gpt-ads-prepare: encoded events spilled to disk as sorted runs, read back by user range.

Memory is bounded by `PrepareOptions.spill_events` (events held at once), not by the log: read batches are
gathered into a run of up to that many events, grouped by block of user codes (code >> shift, at most 2**16
blocks per run: a stable radix sort, so file order within a block) and written to a temporary directory as one
.npy file per column. `Runs.partitions` then cuts the user codes into ranges of at most that many events (one
block of users at least, so a block whose users have more events is a range of its own; boundaries on every
run's blocks) and, for each range, reads its slice
of every run (memory-mapped and contiguous) and sorts it by (user, time); runs come in file order and each
keeps file order, so ties in time still keep file order.

Per event on disk: int32 user code, time as steps from the run's first time (`time_steps`: int32 when they fit),
and per feature the value code in the narrowest signed type that holds the run's codes (`narrow`: int8 / int16 /
int32); per run the row where each block starts and one bit of --test_input origin.
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
    self._runs: list[tuple[str, bool, int]] = []  # (directory, from --test_input, block shift)
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
    shift = max(int(user.max()).bit_length() - 16, 0)
    block = (user >> shift).astype(np.uint16)
    order = np.argsort(block, kind="stable")  # a radix sort: file order within a block
    path = os.path.join(self.dir, f"run-{len(self._runs):05d}")
    os.makedirs(path)
    starts = np.concatenate([[0], np.cumsum(np.bincount(block, minlength=1 << 16))])  # [2**16 + 1] rows
    np.save(os.path.join(path, "block_starts.npy"), starts)
    np.save(os.path.join(path, "user.npy"), user[order])
    base, step, steps = time_steps(time)
    np.save(os.path.join(path, "time_base_step.npy"), np.array([base, step], np.int64))
    np.save(os.path.join(path, "time.npy"), steps[order])
    for c in self.columns:
      np.save(os.path.join(path, f"{c}.npy"), narrow(np.concatenate([p[2][c] for p in self._pending])[order]))
    counts = np.bincount(user, minlength=len(self.user_events))
    counts[:len(self.user_events)] += self.user_events
    self.user_events = counts
    self._runs.append((path, self._pending_test, shift))
    self._pending, self._pending_events = [], 0

  def ranges(self) -> list[tuple[int, int]]:
    """[lo, hi) user-code ranges of at most spill_events events each (one block of users at least), in code
    order, on the blocks of every run."""
    step = 1 << max((shift for _, _, shift in self._runs), default=0)
    blocks = -(-len(self.user_events) // step)
    ends = np.cumsum(np.bincount(np.arange(len(self.user_events)) // step, self.user_events, blocks)).astype(np.int64)
    out, lo = [], 0
    while lo < blocks:
      base = ends[lo - 1] if lo else 0
      hi = max(int(np.searchsorted(ends, base + self.spill_events, side="right")), lo + 1)
      out.append((lo * step, hi * step))
      lo = hi
    return out

  def partitions(self):
    """Yields ((lo, hi), Part) for each user-code range of `ranges`, in code order."""
    self.flush()
    for lo, hi in self.ranges():
      pieces = []
      for path, from_test, shift in self._runs:
        starts = np.load(os.path.join(path, "block_starts.npy"))
        a, b = (int(starts[min(x >> shift, 1 << 16)]) for x in (lo, hi))
        if b > a:
          pieces.append((path, from_test, a, b))
      if not pieces:  # only users whose every row was dropped
        continue
      load = lambda name: np.concatenate([np.load(os.path.join(p, f"{name}.npy"), mmap_mode="r")[a:b]
                                          for p, _, a, b in pieces])
      user = load("user")
      time = np.concatenate([_times(p, a, b) for p, _, a, b in pieces])
      order = user_time_order(user, time, lo, hi)
      from_test = np.concatenate([np.full(b - a, t) for _, t, a, b in pieces])
      yield (lo, hi), Part(user=user[order], time=time[order],
                           values={c: load(c)[order].astype(np.int32) for c in self.columns},
                           from_test=from_test[order])

  @property
  def events(self) -> int:
    return int(self.user_events.sum()) + self._pending_events

  def close(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)


def narrow(codes: np.ndarray) -> np.ndarray:
  """int codes (-1 and up) in the smallest signed type that holds them: fewer bytes to write and read back."""
  if len(codes):
    lo, hi = int(codes.min()), int(codes.max())
    for small in (np.int8, np.int16):
      if np.iinfo(small).min <= lo and hi <= np.iinfo(small).max:
        return codes.astype(small)
  return codes


def time_steps(time: np.ndarray) -> tuple[int, int, np.ndarray]:
  """(base, step, steps) with time == base + steps * step exactly: steps in int32 when they fit (times of second
  or millisecond resolution over months do), else int64 (base 0, step 1 when the span overflows int64)."""
  lo, hi = int(time.min()), int(time.max())
  if hi - lo > np.iinfo(np.int64).max:
    return 0, 1, time
  rel = time - lo
  step = int(np.gcd.reduce(rel)) or 1
  if step > 1:
    rel //= step
  return lo, step, rel.astype(np.int32) if (hi - lo) // step <= np.iinfo(np.int32).max else rel


def _times(path: str, a: int, b: int) -> np.ndarray:
  """int64 times of rows [a, b) of the run at `path` (stored by `Runs.flush` as `time_steps`)."""
  base, step = np.load(os.path.join(path, "time_base_step.npy")).tolist()
  return base + np.load(os.path.join(path, "time.npy"), mmap_mode="r")[a:b].astype(np.int64) * step


def user_time_order(user: np.ndarray, time: np.ndarray, lo: int, hi: int) -> np.ndarray:
  """The stable sort by (user, time) of rows whose users lie in [lo, hi): one sort of a packed int64 key
  (user, time / its common step, row) when it fits in 63 bits (times of second or millisecond resolution
  usually do), otherwise np.lexsort."""
  n = len(user)
  if n == 0:
    return np.zeros(0, np.int64)
  rel = time - time.min()
  step = int(np.gcd.reduce(rel)) or 1
  rel //= step
  user_bits, time_bits, row_bits = (hi - lo - 1).bit_length(), int(rel.max()).bit_length(), (n - 1).bit_length()
  if user_bits + time_bits + row_bits > 63:
    return np.lexsort((time, user))
  key = (((user.astype(np.int64) - lo) << time_bits | rel) << row_bits) | np.arange(n)
  return np.argsort(key)  # unique keys: any sort is stable

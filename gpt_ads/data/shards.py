"""The ArrayRecord shard files of a prepared data set: one split's files written in order (`SplitFiles`), and
the child process that writes them for large data sets (`WriterProcess`, `serve`). Used by gpt_ads.data.writer.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
from typing import Callable

import numpy as np

from gpt_ads.data.store import TFDS_NAME

# One record per chunk (random access, as TFDS writes them); snappy writes ~2x faster than the default zstd for
# ~1.3x the bytes.
WRITER_OPTIONS = "group_size:1,snappy"


class SplitFiles:
  """One split's ArrayRecord files, written on the writer thread: the shards of a plan (`ends`: the end record
  of each shard) one after the other, or (ends None) one file, `path(split, 0, 1)`, cut into shards later."""

  def __init__(self, path: Callable[[str, int, int], str], split: str, ends: list[int] | None):
    self._path, self.split, self.ends = path, split, ends
    self.written, self._shard, self._writer = 0, 0, None

  def write(self, blobs: list[bytes]) -> None:
    from array_record.python import array_record_module
    for data in blobs:
      if self._writer is None or (self.ends and self.written == self.ends[self._shard]):
        if self._writer is not None:
          self._writer.close()
          self._shard += 1
        num = len(self.ends) if self.ends else 1
        if self._shard >= num:
          raise ValueError(f"split {self.split!r}: more records than the writer's sizes said ({self.ends[-1]})")
        self._writer = array_record_module.ArrayRecordWriter(self._path(self.split, self._shard, num),
                                                             WRITER_OPTIONS)
      self._writer.write(data)
      self.written += 1

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def shard_path(data_dir: str, split: str, shard: int, num_shards: int) -> str:
  """The ArrayRecord file of one shard of a split, as TFDS names it."""
  return os.path.join(data_dir, f"{TFDS_NAME}-{split}.array_record-{shard:05d}-of-{num_shards:05d}")


class WriterProcess:
  """The writes of a large data set in a child process, on the other core: ArrayRecord's per-record write holds
  the GIL, so a writer thread takes turns with the encoding instead of running beside it (measured: numpy in
  the main thread at 38% of its speed while a thread writes). Each batch of records is copied, joined, into
  one of SLOTS memory-mapped files next to the data set (`ring`: their pages stay resident, so a copy is a
  memcpy); the socket carries (split, slot, record lengths). The child writes the records into the planned shard
  files in order and answers each batch: None, or the one-line error it met. Only with a shard plan."""

  SLOTS = 3

  def __init__(self, data_dir: str, plans: dict[str, list[int]], ring: str):
    # A fresh interpreter on one end of a socket pair: not fork (the caller may hold threads: pyarrow's pools),
    # and not multiprocessing's spawn, which re-runs the caller's main script (one without a __main__ guard
    # would prepare its data again in the child).
    import socket  # only for large data sets
    import subprocess
    from multiprocessing.connection import Connection
    ours, theirs = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # gpt_ads as the caller found it
    self._process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gpt_ads.data import shards; shards.serve(int(sys.argv[1]))",
         str(theirs.fileno())], pass_fds=(theirs.fileno(),), env=env)
    theirs.close()
    self._conn = Connection(ours.detach())
    self._conn.send((data_dir, plans, ring))
    self._ring = ring
    self._maps: list = [None] * self.SLOTS
    self._in_flight: collections.deque = collections.deque()  # slots the child has not answered yet
    self._next = 0

  def submit(self, split: str, blobs: list[bytes]) -> None:
    slot = self._next
    self._next = (slot + 1) % self.SLOTS
    while slot in self._in_flight:
      self._answer()
    data = b"".join(blobs)
    self._maps[slot] = mapped(f"{self._ring}-{slot}", len(data), self._maps[slot], grow=True)
    self._maps[slot][:len(data)] = data
    self._send((split, slot, [len(b) for b in blobs]))
    self._in_flight.append(slot)

  def _send(self, message) -> None:
    try:
      self._conn.send(message)
    except OSError:  # a broken pipe: the child is gone
      raise OSError(f"the ArrayRecord writer process ended (exit code {self._process.wait()})") from None

  def _answer(self) -> None:
    try:
      error = self._conn.recv()
    except EOFError:
      raise OSError(f"the ArrayRecord writer process ended (exit code {self._process.wait()})") from None
    self._in_flight.popleft()
    if error is not None:
      raise ValueError(error)

  def close(self) -> None:
    """Waits for every batch; closes the shard files and removes the ring."""
    self._send(None)
    self._in_flight.append(None)
    while self._in_flight:
      self._answer()
    self._process.wait()
    self._conn.close()
    self._remove_ring()

  def abort(self) -> None:
    self._process.kill()
    self._process.wait()
    self._conn.close()
    self._remove_ring()

  def _remove_ring(self) -> None:
    for slot, m in enumerate(self._maps):
      if m is not None:
        m.close()
      with contextlib.suppress(FileNotFoundError):
        os.remove(f"{self._ring}-{slot}")
    self._maps = [None] * self.SLOTS


def mapped(path: str, size: int, current, *, grow: bool):
  """A shared memory map of `path` of at least `size` bytes (`current` when it is large enough); `grow`: make the
  file that large first (the writing side)."""
  import mmap  # the writer process's ring only
  if current is not None and len(current) >= size:
    return current
  if current is not None:
    current.close()
  with open(path, "a+b") as f:
    if grow:
      f.truncate(max(size, 1 << 20, 2 * os.path.getsize(path)))
    return mmap.mmap(f.fileno(), 0)


def serve(fd: int) -> None:
  """The child of `WriterProcess`, on socket `fd`: (data dir, shard plans, ring) first, then the batches."""
  import functools  # the child's own imports
  from multiprocessing.connection import Connection
  conn = Connection(fd)
  data_dir, plans, ring = conn.recv()
  files = {s: SplitFiles(functools.partial(shard_path, data_dir), s, ends) for s, ends in plans.items()}
  maps: list = [None] * WriterProcess.SLOTS
  while True:
    message = conn.recv()
    try:
      if message is None:
        for f in files.values():
          f.close()
        conn.send(None)
        return
      split, slot, lengths = message
      ends = np.cumsum([0, *lengths]).tolist()
      maps[slot] = m = mapped(f"{ring}-{slot}", ends[-1], maps[slot], grow=False)
      files[split].write([m[a:b] for a, b in zip(ends[:-1], ends[1:])])
      conn.send(None)
    except Exception as e:  # the child's boundary: whatever went wrong goes back as the parent's one line
      conn.send(" ".join(f"{type(e).__name__}: {e}".split()) if not isinstance(e, (OSError, ValueError))
                else " ".join(str(e).split()))
      return

"""Grain input pipeline for in-memory users -> per-process batches -> global `jax.Array`s.

A batch is {feature: int32 [b, t], "segment_ids": int32 [b, t] (0 = padding), "positions": int32 [b, t]}.
Training batches come from a random-access `grain.MapDataset` (shuffled, reshuffled every epoch, repeated):
batch `step` is a pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted
run would have seen, and every process reads only its own rows of each global batch.
"""

from typing import Iterator

import grain
import jax
import numpy as np

from gpt_ads import features as features_lib


class UsersSource:
  """A grain random-access source over users held as padded arrays ({name: [n, max_len]} + lengths [n]).

  Each record is one user's row: {feature: [max_len], "segment_ids": [max_len], "positions": [max_len]}.
  """

  def __init__(self, features: dict[str, np.ndarray], lengths: np.ndarray):
    self._features = {k: np.asarray(v, np.int32) for k, v in features.items()}
    self._lengths = np.asarray(lengths, np.int32)
    self._max_len = next(iter(self._features.values())).shape[1]

  def __len__(self) -> int:
    return len(self._lengths)

  @property
  def feature_names(self) -> tuple[str, ...]:
    return tuple(self._features)

  @property
  def max_len(self) -> int:
    return self._max_len

  @property
  def lengths(self) -> np.ndarray:
    return self._lengths

  @property
  def features(self) -> dict[str, np.ndarray]:
    return self._features

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    pos = np.arange(self._max_len, dtype=np.int32)
    present = pos < self._lengths[i]
    row = {k: v[i] for k, v in self._features.items()}
    row["segment_ids"] = present.astype(np.int32)
    row["positions"] = np.where(present, pos, 0).astype(np.int32)
    return row

  def __repr__(self) -> str:
    return f"UsersSource(n={len(self)}, max_len={self._max_len})"


def empty_row(names, max_len: int) -> dict[str, np.ndarray]:
  """A padding row: no events."""
  row = {k: np.full(max_len, features_lib.PAD_ID, np.int32) for k in names}
  row["segment_ids"] = np.zeros(max_len, np.int32)
  row["positions"] = np.zeros(max_len, np.int32)
  return row


class PackedRows:
  """Users packed into [max_len] rows: a random-access grain source over an endless, reshuffled stream.

  Epoch e shuffles the users (seed, e) and packs them in that order, first-fit into the `open_rows` most
  recently opened rows; each user keeps its own segment id within a row and its positions restart at 0.
  Row i of the stream is a pure function of (seed, i): resuming at any step reproduces the same rows.
  """

  def __init__(self, source: UsersSource, *, seed: int, open_rows: int = 8):
    self._src, self._seed, self._open = source, seed, open_rows
    self._plans: list[list[list[int]]] = []  # epoch -> rows -> user indices
    self._starts = [0]  # first stream row of each epoch

  def _plan(self, epoch: int) -> list[list[int]]:
    order = np.random.default_rng([self._seed, epoch]).permutation(len(self._src))
    lengths = self._src.lengths
    rows, free = [], []
    for u in order:
      n = int(lengths[u])
      for j in range(max(0, len(rows) - self._open), len(rows)):
        if free[j] >= n:
          rows[j].append(int(u))
          free[j] -= n
          break
      else:
        rows.append([int(u)])
        free.append(self._src.max_len - n)
    return rows

  def __len__(self) -> int:
    return np.iinfo(np.int64).max  # endless

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    while self._starts[-1] <= i:
      self._plans.append(self._plan(len(self._plans)))
      self._starts.append(self._starts[-1] + len(self._plans[-1]))
    epoch = int(np.searchsorted(self._starts, i, side="right")) - 1
    users = self._plans[epoch][i - self._starts[epoch]]
    row = empty_row(self._src.feature_names, self._src.max_len)
    at = 0
    for seg, u in enumerate(users, start=1):
      n = int(self._src.lengths[u])
      for k in self._src.feature_names:
        row[k][at:at + n] = self._src.features[k][u, :n]
      row["segment_ids"][at:at + n] = seg
      row["positions"][at:at + n] = np.arange(n)
      at += n
    return row


def train_dataset(source: UsersSource, *, global_batch: int, seed: int, pack: bool = True) -> grain.MapDataset:
  """ds[step] = this process's rows of global batch `step` (endless; reshuffled every epoch).

  pack=True packs several users into each row (no padding waste); pack=False gives one user per row.
  """
  pc, pi = jax.process_count(), jax.process_index()
  if global_batch % pc:
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by the {pc} processes")
  if pack:
    ds = grain.MapDataset.source(PackedRows(source, seed=seed))
  else:
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  ds = ds.batch(global_batch // pc, drop_remainder=False)
  return ds[pi::pc]


def eval_batches(source: UsersSource, *, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Every user once, in order; the last global batch is filled with empty rows. Yields this process's rows."""
  pc, pi = jax.process_count(), jax.process_index()
  local = global_batch // pc
  n = len(source)
  for start in range(0, n, global_batch):
    rows = []
    for j in range(start + pi * local, start + (pi + 1) * local):
      rows.append(source[j] if j < n else empty_row(source.feature_names, source.max_len))
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def to_global(local_batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's rows -> global arrays laid out by `sharding` (the batch over the data-parallel axes)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def num_events(local_batch: dict[str, np.ndarray]) -> int:
  """Real (non-padding) events in this process's rows."""
  return int(np.count_nonzero(local_batch["segment_ids"]))

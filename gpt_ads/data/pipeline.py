"""Grain input pipeline: a split of a prepared data set -> per-process batches -> global `jax.Array`s.

A batch is {feature: int32 [b, t], "segment_ids": int32 [b, t] (0 = padding), "positions": int32 [b, t]}.
Its source is any random-access source of user records ({feature: int ids [n], ...}), in practice a split of a
prepared data set (`store.Prepared.source`, a `tfds.data_source`).

Training (endless):   source[p::P] -> shuffle(seed), reshuffled every epoch -> repeat -> random window of at most
                      max_len events -> iterator (ReadOptions threads) -> FirstFitPackIterDataset (several users
                      per row: segment ids, positions restarting per user) or one user per padded row -> batch
                      of this process's rows -> optional multiprocess prefetch.
Evaluation (finite):  every user once, in order, its LAST max_len events, one user per padded row; every process
                      yields the same number of batches (empty rows fill the tail), so collectives line up.

The training iterator is a grain `DatasetIterator`: `get_state()` / `set_state()` (saved with the checkpoints)
make a resumed run see exactly the batches an uninterrupted run would have seen.
"""

from typing import Iterator, Sequence

import grain
import jax
import numpy as np

from gpt_ads import features as features_lib

SEGMENT_IDS, POSITIONS = "segment_ids", "positions"


class Window:
  """A user record -> {feature: int32 ids [<= max_len]}: a random window (training) or the last one (eval).

  Attributes:
    names: the schema's feature names; max_len: the row length.
  """

  def __init__(self, names: Sequence[str], max_len: int):
    self.names, self.max_len = tuple(names), max_len

  def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    n = len(record[self.names[0]])
    start = n - self.max_len  # the last window
    if rng is not None and start > 0:
      start = int(rng.integers(0, start + 1))
    start = max(start, 0)
    return {k: np.asarray(record[k][start:start + self.max_len], np.int32) for k in self.names}


def padded_row(user: dict[str, np.ndarray], names: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
  """One user (or nobody, for an empty dict) in a [max_len] row padded with PAD / segment 0."""
  n = len(user[names[0]]) if user else 0
  row = {k: np.full(max_len, features_lib.PAD_ID, np.int32) for k in names}
  for k in names:
    if n:
      row[k][:n] = user[k]
  row[SEGMENT_IDS] = (np.arange(max_len) < n).astype(np.int32)
  row[POSITIONS] = np.where(row[SEGMENT_IDS] > 0, np.arange(max_len), 0).astype(np.int32)
  return row


class _FromPacked:
  """FirstFitPackIterDataset output ({f, f_segment_ids, f_positions} per feature) -> the batch layout."""

  def __init__(self, names: Sequence[str]):
    self.names = tuple(names)

  def __call__(self, packed: dict) -> dict[str, np.ndarray]:
    first = self.names[0]
    out = {k: np.asarray(packed[k], np.int32) for k in self.names}
    out[SEGMENT_IDS] = np.asarray(packed[f"{first}_segment_ids"], np.int32)
    out[POSITIONS] = np.asarray(packed[f"{first}_positions"], np.int32)
    return out


class _Padded:
  """One user -> one padded row (no packing)."""

  def __init__(self, names: Sequence[str], max_len: int):
    self.names, self.max_len = tuple(names), max_len

  def __call__(self, user: dict) -> dict[str, np.ndarray]:
    return padded_row(user, self.names, self.max_len)


def local_batch_size(global_batch: int) -> int:
  pc = jax.process_count()
  if global_batch % pc:
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by the {pc} processes")
  return global_batch // pc


def train_dataset(source, *, names: Sequence[str], max_len: int, global_batch: int, seed: int, pack: bool = True,
                  packing_bins: int = 0, read_threads: int = 2, num_workers: int = 0) -> grain.IterDataset:
  """This process's endless stream of training batches (see the module docstring).

  Args:
    packing_bins: rows the packer fills at once (more: less padding); 0 = 4 x the local batch.
    num_workers: > 0 runs the pipeline in that many worker processes (grain multiprocess prefetch).
  """
  local = local_batch_size(global_batch)
  pc, pi = jax.process_count(), jax.process_index()
  if len(source) < pc:
    raise ValueError(f"the training split has {len(source)} users, fewer than the {pc} processes")
  ds = grain.MapDataset.source(source)[pi::pc].shuffle(seed=seed).repeat()
  ds = ds.random_map(Window(names, max_len), seed=seed)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * local))
  if pack:
    it = grain.experimental.FirstFitPackIterDataset(
        it, length_struct={k: max_len for k in names}, num_packing_bins=packing_bins or 4 * local, seed=seed,
        shuffle_bins=True)
    it = it.map(_FromPacked(names))
  else:
    it = it.map(_Padded(names, max_len))
  it = it.batch(local, drop_remainder=True)
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it


def eval_batches(source, *, names: Sequence[str], max_len: int, global_batch: int) -> Iterator[dict]:
  """Every user of `source` once (its last max_len events), as this process's rows of each global batch."""
  local = local_batch_size(global_batch)
  pc, pi = jax.process_count(), jax.process_index()
  window = Window(names, max_len)
  n = len(source)
  for start in range(0, n, global_batch):
    rows = []
    for j in range(start + pi * local, start + (pi + 1) * local):
      rows.append(padded_row(window(source[j]) if j < n else {}, names, max_len))
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def to_global(local_batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's rows -> global arrays laid out by `sharding` (the batch over the data-parallel axes)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def num_events(local_batch: dict[str, np.ndarray]) -> int:
  """Real (non-padding) events in this process's rows."""
  return int(np.count_nonzero(local_batch[SEGMENT_IDS]))

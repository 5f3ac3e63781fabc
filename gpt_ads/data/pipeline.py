"""Grain input pipeline: a split of a prepared data set -> per-process batches -> global `jax.Array`s.

A batch is {feature: int32 [b, t], "segment_ids": int32 [b, t] (0 = padding), "positions": int32 [b, t]}.
Its source is any random-access source of user records ({feature: int ids [n], ...}), in practice a split of a
prepared data set (`store.Prepared.source`, a `store.SplitSource`).

Training (endless):   per input shard s of S: its users (`input_shard_keys`) -> shuffle(seed), reshuffled every epoch -> repeat ->
                      blocks of READ_BLOCK users read in one batched call -> a random window of at most max_len
                      events per user -> iterator (ReadOptions threads) -> unblock -> FirstFitPackIterDataset
                      (several users per row: segment ids, positions restarting per user) or one user per padded
                      row -> batch of the shard's rows -> optional multiprocess prefetch; a process concatenates
                      its shards' rows.
Evaluation (finite):  every user once, its LAST max_len events, packed first-fit in order into rows; every
                      process yields the same number of batches (empty rows fill the tail), so collectives line up.

The training batches come from `TrainIterator` (input shards, each a grain stream); its `get_state()` /
`set_state()` (saved with the checkpoints) make a resumed run see exactly the batches an uninterrupted run
would have seen, on the same or on another number of processes.
"""

import json
from typing import Iterator, Sequence

import grain
import jax
import numpy as np

from gpt_ads import features as features_lib

SEGMENT_IDS, POSITIONS = features_lib.SEGMENT_IDS, features_lib.POSITIONS
# Users per batched read (`source.__getitems__`): an ArrayRecord single-record read costs time linear in its
# shard's record count (~0.5 ms per user on a 100K-user shard here); a batched read of 64 ~30 us per user.
READ_BLOCK = 64


def read(source, keys: Sequence[int]) -> list[dict]:
  """The records `keys` of `source` in one batched read where the source has one (`__getitems__`, the batched
  read grain uses too), else one by one."""
  keys = list(keys)
  return source.__getitems__(keys) if hasattr(source, "__getitems__") else [source[k] for k in keys]


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


class _ReadBlock:
  """A block of user indices -> their records, read in one batched call, cut to random windows."""

  def __init__(self, source, window: Window):
    self.source, self.window = source, window

  def __call__(self, block: list, rng: np.random.Generator) -> list:
    return [self.window(record, rng) for record in read(self.source, block)]


class _Unblock(grain.experimental.FlatMapTransform):
  max_fan_out = READ_BLOCK

  def flat_map(self, block: list) -> list:
    return block


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


def input_shard_keys(source, shard: int, num_shards: int) -> np.ndarray:
  """The record keys input shard `shard` of `num_shards` reads: a `store.SplitSource` gives whole files where
  they divide evenly (each host reads its own files); any other source, every num_shards-th record."""
  if hasattr(source, "input_shard_keys"):
    return source.input_shard_keys(shard, num_shards)
  return np.arange(len(source))[shard::num_shards]


def shard_stream(source, *, names: Sequence[str], max_len: int, rows: int, seed: int, shard: int = 0,
                 num_shards: int = 1, pack: bool = True, packing_bins: int = 0, read_threads: int = 1,
                 num_workers: int = 0) -> grain.IterDataset:
  """Input shard `shard` of `num_shards`: an endless stream of [rows, max_len] batches of its users.

  Args:
    packing_bins: rows the packer fills at once (more: less padding); 0 = 4 x rows.
    num_workers: > 0 runs the pipeline in that many worker processes (grain multiprocess prefetch).
  """
  if len(source) < num_shards:
    raise ValueError(f"the training split has {len(source)} users, fewer than the {num_shards} input shards")
  seed = int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])  # the shard's own, whatever the hosts
  users = grain.MapDataset.source(input_shard_keys(source, shard, num_shards)).shuffle(seed=seed).repeat()
  ds = users.batch(READ_BLOCK, batch_fn=list).random_map(_ReadBlock(source, Window(names, max_len)), seed=seed)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2))
  it = grain.experimental.FlatMapIterDataset(it, _Unblock())
  if pack:
    it = grain.experimental.FirstFitPackIterDataset(
        it, length_struct={k: max_len for k in names}, num_packing_bins=packing_bins or 4 * rows, seed=seed,
        shuffle_bins=True)
    it = it.map(_FromPacked(names))
  else:
    it = it.map(_Padded(names, max_len))
  it = it.batch(rows, drop_remainder=True)
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it


class TrainIterator:
  """This process's training batches: its input shards' streams, concatenated row-wise in shard order.

  The global batch is split into `num_shards` input shards (default: one per process). Shard s always holds
  the same users and sees the same rows, so a run produces the same global batches on 1 process x 8 devices
  as on 2 processes x 4 devices (with the same num_shards), and a checkpoint written by one layout resumes on
  another. `get_state()` -> {"num_shards": S, "shards": {s: grain iterator state}}; `set_state` takes such a
  dict (entries for shards this process does not own are ignored).

  Attributes:
    num_shards: input shards in all; shards: the ones this process reads.
  """

  def __init__(self, source, *, names: Sequence[str], max_len: int, global_batch: int, seed: int,
               num_shards: int = 0, process_index: int | None = None, process_count: int | None = None,
               **stream_kwargs):
    pc = jax.process_count() if process_count is None else process_count  # given: a data loader outside jax
    pi = jax.process_index() if process_index is None else process_index
    self.num_shards = num_shards or pc
    if self.num_shards % pc or global_batch % self.num_shards:
      raise ValueError(f"config.data.num_shards={self.num_shards} must be a multiple of the {pc} processes and "
                       f"divide config.train.batch_size={global_batch}")
    k = self.num_shards // pc
    self.shards = tuple(range(pi * k, (pi + 1) * k))
    rows = global_batch // self.num_shards
    self._its = {s: iter(shard_stream(source, names=names, max_len=max_len, rows=rows, seed=seed, shard=s,
                                      num_shards=self.num_shards, **stream_kwargs)) for s in self.shards}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(self._its[s]) for s in self.shards]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict:
    return {"num_shards": self.num_shards, "shards": {str(s): self._its[s].get_state() for s in self.shards}}

  def global_state(self) -> dict:
    """`get_state()` of every process merged (a collective: every process calls it at the same step)."""
    state = self.get_state()
    if jax.process_count() == 1:
      return state
    from jax.experimental import multihost_utils
    blob = np.frombuffer(json.dumps(state["shards"]).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([blob.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:blob.size] = blob
    blobs = np.asarray(multihost_utils.process_allgather(padded))  # [processes, longest]
    shards = {}
    for row, n in zip(blobs, sizes):
      shards.update(json.loads(bytes(row[:n]).decode()))
    return {"num_shards": self.num_shards, "shards": shards}

  def set_state(self, state: dict) -> None:
    if state["num_shards"] != self.num_shards:
      raise ValueError(f"the checkpoint's input position is for {state['num_shards']} input shards, this run has "
                       f"{self.num_shards}; set --config.data.num_shards={state['num_shards']} to resume it")
    for s in self.shards:
      self._its[s].set_state(state["shards"][str(s)])


def _pack_rows(users: list[dict[str, np.ndarray]], names: Sequence[str], max_len: int,
               open_rows: int = 16) -> list[dict[str, np.ndarray]]:
  """Users (in order) first-fit into the `open_rows` most recent [max_len] rows: segment ids, positions."""
  plans, free = [], []
  for u, user in enumerate(users):
    n = len(user[names[0]])
    for j in range(max(0, len(plans) - open_rows), len(plans)):
      if free[j] >= n:
        plans[j].append(u)
        free[j] -= n
        break
    else:
      plans.append([u])
      free.append(max_len - n)
  rows = []
  for plan in plans:
    row = padded_row({}, names, max_len)
    at = 0
    for seg, u in enumerate(plan, start=1):
      n = len(users[u][names[0]])
      for k in names:
        row[k][at:at + n] = users[u][k]
      row[SEGMENT_IDS][at:at + n] = seg
      row[POSITIONS][at:at + n] = np.arange(n)
      at += n
    rows.append(row)
  return rows


def eval_batches(source, *, names: Sequence[str], max_len: int, global_batch: int,
                 pack: bool = True) -> Iterator[dict]:
  """Every user of `source` once (its last max_len events), as this process's rows of each global batch.

  This process takes users p, p + P, ... and packs them into rows (pack=False: one user per row); every process
  yields the same number of batches (empty rows and batches fill the tail) so that collectives line up. The
  split is held in memory as rows: evaluation splits are meant to be small.
  """
  local = local_batch_size(global_batch)
  pc, pi = jax.process_count(), jax.process_index()
  window = Window(names, max_len)
  keys = list(range(pi, len(source), pc))
  users = []
  for start in range(0, len(keys), READ_BLOCK):
    block = keys[start:start + READ_BLOCK]
    users += [window(r) for r in read(source, block)]
  rows = _pack_rows(users, names, max_len) if pack else [padded_row(u, names, max_len) for u in users]
  num_batches = -(-len(rows) // local)
  if pc > 1:
    from jax.experimental import multihost_utils
    num_batches = int(np.max(multihost_utils.process_allgather(np.array([num_batches], np.int32))))
  empty = padded_row({}, names, max_len)
  for b in range(num_batches):
    part = rows[b * local:(b + 1) * local]
    part += [empty] * (local - len(part))
    yield {k: np.stack([r[k] for r in part]) for k in empty}


def to_global(local_batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's rows -> global arrays laid out by `sharding` (the batch over the data-parallel axes)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def num_events(local_batch: dict[str, np.ndarray]) -> int:
  """Real (non-padding) events in this process's rows."""
  return int(np.count_nonzero(local_batch[SEGMENT_IDS]))

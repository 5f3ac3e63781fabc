"""Writing a prepared data set (gpt_ads.data.store's format): `Writer` streams user records into the TFDS
ArrayRecord files and metadata, `write` writes whole splits.

Atomic: everything goes to a temporary sibling of the output directory, renamed onto it at the end, so a failed
or interrupted run never leaves a half-written data set behind. Record bytes: gpt_ads.data.records.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
import json
import logging as py_logging
import os
import shutil
import tempfile
from typing import Callable, Iterable

import numpy as np

from gpt_ads import features as features_lib
from gpt_ads.data import records, shards, store
from gpt_ads.data.store import FORMAT, SCHEMA_FILE, SPLITS, TFDS_NAME, TFDS_VERSION

PROCESS_FROM_BYTES = 256 << 20  # data sets of this many record bytes: written by a child (shards.WriterProcess)


def tfds_features(feature_names, label_names=()):
  """The TFDS FeaturesDict of the records (what `records` encodes and `tfds.data_source` decodes)."""
  tfds = store.import_tfds()
  feats = {"user_id": tfds.features.Text()}
  feats.update({n: tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES)
                for n in feature_names})  # raw int32 bytes: fast to write, cheap to decode
  if label_names:
    feats["labels"] = tfds.features.FeaturesDict({n: tfds.features.Scalar(dtype=np.float32) for n in label_names})
  return tfds.features.FeaturesDict(feats)


class _SplitCounter:
  """Checks every record of one split as it streams past, counting users, events and (train) value counts.

  Id ranges are checked and counted in batches of FLUSH_USERS users (vectorized); a bad id still stops the write
  (nothing is kept) with the user named.
  """
  FLUSH_USERS = 4096

  def __init__(self, split: str, features: list[dict], label_names: tuple[str, ...]):
    self.split, self.features, self.label_names = split, features, label_names
    self.users, self.events, self.max_events = 0, 0, 0
    self.counts = {f["name"]: np.zeros(f["vocab_size"], np.int64) for f in features}
    self._names = [f["name"] for f in features]
    self._pending: list[dict] = []

  def _where(self, user_id) -> str:
    return f"split {self.split!r}, user {user_id!r}"

  def check(self, record: dict) -> dict:
    """The record as it is written: {"user_id": str, <feature>: int32 [n], "labels": {name: float32}}."""
    out = {"user_id": str(record["user_id"])}
    n = None
    for name in self._names:
      ids = record.get(name)
      if ids is None:
        raise ValueError(f"{self._where(out['user_id'])}: record has no feature {name!r}")
      if type(ids) is not np.ndarray:
        ids = np.asarray(ids)
      if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"{self._where(out['user_id'])}, feature {name!r}: ids must be a 1-D integer array, got "
                         f"{ids.dtype}{ids.shape}")
      n = len(ids) if n is None else n
      if len(ids) != n or n == 0:
        raise ValueError(f"{self._where(out['user_id'])}: every feature needs the same, non-zero number of events")
      out[name] = np.ascontiguousarray(ids, dtype="<i4")
    if self.label_names:
      labels = record.get("labels", {})
      out["labels"] = {k: float(np.float32(labels.get(k, np.nan))) for k in self.label_names}
    self.users, self.events, self.max_events = self.users + 1, self.events + n, max(self.max_events, n)
    self._pending.append(out)
    if len(self._pending) >= self.FLUSH_USERS:
      self.flush()
    return out

  def check_many(self, user_ids, lengths: np.ndarray, ids: dict) -> None:
    """Checks and counts many users at once (`Writer.add_users`)."""
    lengths = np.asarray(lengths)
    if len(user_ids) != len(lengths) or (lengths < 1).any():
      raise ValueError(f"split {self.split!r}: one length >= 1 per user is needed")
    for name in self._names:
      x = ids.get(name)
      if x is None or x.ndim != 1 or x.dtype.kind not in "iu" or len(x) != lengths.sum():
        raise ValueError(f"split {self.split!r}, feature {name!r}: ids must be a 1-D integer array of "
                         f"{lengths.sum()} events (the users' lengths summed)")
    self._check_ids(user_ids, lengths, ids)
    self.users += len(lengths)
    self.events += int(lengths.sum())
    self.max_events = max(self.max_events, int(lengths.max(initial=0)))

  def flush(self) -> None:
    """Checks and counts the ids of the records `check` has gathered."""
    pending, self._pending = self._pending, []
    if pending:
      self._check_ids([r["user_id"] for r in pending], np.array([len(r[self._names[0]]) for r in pending]),
                      {name: np.concatenate([r[name] for r in pending]) for name in self._names})

  def _check_ids(self, user_ids, lengths: np.ndarray, ids: dict) -> None:
    """Every id in [OOV_ID, vocab_size) (else an error naming the user); train: adds the value counts."""
    for f in self.features:
      name, v, x = f["name"], f["vocab_size"], ids[f["name"]]
      if len(x) and (x.min() < features_lib.OOV_ID or x.max() >= v):
        k = np.searchsorted(np.cumsum(lengths), np.flatnonzero((x < features_lib.OOV_ID) | (x >= v))[0], "right")
        raise ValueError(f"{self._where(user_ids[k])}, feature {name!r}: ids must lie in "
                         f"[{features_lib.OOV_ID}, {v})")
      if self.split == "train":
        self.counts[name] += np.bincount(x, minlength=v)


class Writer:
  """Streams user records into a new prepared data set: `add(split, record)` in any split order, then `finish`.

  Everything goes to a temporary sibling of `out_dir`, renamed onto it by `finish`; `abort` (or an exception
  inside `with Writer(...)`) removes it, so a failed run leaves nothing behind. Records keep the order they were
  added in, per split, in `num_shards` ArrayRecord files (shards.WRITER_OPTIONS; 0 = TFDS's rule from the data
  size: files of 64 MiB to 1 GiB) with TFDS's shard boundaries. With `sizes` (each split's records and
  serialized bytes, known up front: `records.Encoder.size`) records go straight into their shard files;
  otherwise each split is streamed into one file, cut into shards at the end. A background thread compresses
  and writes (ArrayRecord holds the GIL while it does, so the thread overlaps little); from PROCESS_FROM_BYTES
  of planned records a child process does (`shards.WriterProcess`), on the other core. The TFDS metadata
  (dataset_info.json, features.json) is written by `tfds.folder_dataset.write_metadata`, so `tfds.data_source`
  and `builder_from_directory` read the data set.

  Args:
    features: [{name, vocab_size, loss, vocabulary, ...}] in schema order (extra keys are kept); `counts` is
      computed here from the train split.
    labels: {name: {kind, ...}} of the per-user labels every record carries (missing values: NaN).
    splits: the splits the data set has ("train" among them).
    overwrite: replace an existing data set at `out_dir` (otherwise that is an error).
    num_shards: ArrayRecord files per split (hosts reading disjoint files: `SplitSource.input_shard_keys`).
    sizes: {split: (records, serialized bytes)} when the caller knows them (the same files, written once).
  """

  def __init__(self, out_dir: str, *, features: list[dict], labels: dict | None = None,
               splits: Iterable[str] = SPLITS, overwrite: bool = False, num_shards: int = 0,
               sizes: dict[str, tuple[int, int]] | None = None):
    self.out_dir = os.path.abspath(out_dir)
    splits = tuple(splits)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or "train" not in splits:
      raise ValueError(f"splits must include 'train' and be among {SPLITS}; got {sorted(splits)}")
    if os.path.exists(self.out_dir) and not overwrite:
      raise ValueError(f"{self.out_dir} already exists; choose another --output or remove it first")
    if num_shards < 0:
      raise ValueError(f"--num_shards={num_shards}: give 0 (from the data size) or a positive number of files")
    for f in features:
      features_lib.FeatureSpec(name=f["name"], vocab_size=int(f["vocab_size"]), loss=f["loss"])  # validates
    self.features, self.labels, self.num_shards = features, dict(labels or {}), num_shards
    label_names = tuple(self.labels)
    self._counters = {s: _SplitCounter(s, features, label_names) for s in splits}
    self._encoder = records.Encoder([f["name"] for f in features], label_names)
    parent = os.path.dirname(self.out_dir)
    os.makedirs(parent, exist_ok=True)
    self._tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(self._tmp, 0o777 & ~umask)  # mkdtemp makes it private; the data set is as readable as any new one
    self._data_dir = os.path.join(self._tmp, "tfds", TFDS_NAME, TFDS_VERSION)
    os.makedirs(self._data_dir)
    self._bytes = dict.fromkeys(splits, 0)
    self._files = {s: shards.SplitFiles(self._path, s, self._shard_ends(s, *sizes[s]) if sizes else None)
                   for s in splits}
    self._buffers: dict[str, list[bytes]] = {s: [] for s in splits}
    self._pool = concurrent.futures.ThreadPoolExecutor(1)  # one thread: writes keep their order
    self._pending: collections.deque = collections.deque()
    self._process = None  # large planned data sets: the writes go to a child process, not the thread
    if sizes and sum(size for _, size in sizes.values()) >= PROCESS_FROM_BYTES:
      self._process = shards.WriterProcess(self._data_dir, {s: f.ends for s, f in self._files.items()},
                                           os.path.join(self._tmp, "writer-ring"))

  def _shard_ends(self, split: str, users: int, size: int) -> list[int]:
    """The end record of each shard file of `split` (TFDS's boundaries and, for num_shards=0, its rule)."""
    shard_utils = store.import_tfds().core.utils.shard_utils
    num = self.num_shards or shard_utils.ShardConfig.calculate_number_shards(size, users)
    if users < num:
      raise ValueError(f"--num_shards={num}: split {split!r} has {users} users; every split needs at least as many "
                       "users as files, so give a smaller --num_shards (or 0: from the data size)")
    return list(shard_utils.get_shard_boundaries(users, num))

  def _submit(self, split: str, blobs: list[bytes]) -> None:
    """Hands encoded records to the writer thread or process (at most two batches in flight)."""
    if self._process is not None:
      self._process.submit(split, blobs)
      self._files[split].written += len(blobs)
      return
    self._pending.append(self._pool.submit(self._files[split].write, blobs))
    while len(self._pending) > 2:
      self._pending.popleft().result()

  def _path(self, split: str, shard: int, num_shards: int) -> str:
    return shards.shard_path(self._data_dir, split, shard, num_shards)

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is not None:
      self.abort()

  def add(self, split: str, record: dict) -> None:
    """Checks and appends one user record {"user_id", <feature>: int [n], "labels": {...}} to `split`."""
    counter = self._counters.get(split)
    if counter is None:
      raise ValueError(f"split {split!r} is not among this writer's splits {tuple(self._counters)}")
    r = counter.check(record)
    data = self._encoder.encode(r["user_id"], r, r.get("labels"))
    self._bytes[split] += len(data)
    buffer = self._buffers[split]
    buffer.append(data)
    if len(buffer) >= 1024:
      self._submit(split, buffer)
      self._buffers[split] = []

  def add_users(self, split: str, user_ids, lengths: np.ndarray, ids: dict, labels: dict | None = None) -> None:
    """Appends many users to `split` at once (checked vectorized): user k has the next lengths[k] events of
    every `ids` {feature: int [sum(lengths)]} and the labels {name: float [users]}[k]."""
    counter = self._counters.get(split)
    if counter is None:
      raise ValueError(f"split {split!r} is not among this writer's splits {tuple(self._counters)}")
    counter.check_many(user_ids, lengths, ids)
    if counter.label_names:
      labels = {k: np.asarray((labels or {}).get(k, np.full(len(lengths), np.nan)), np.float32)
                for k in counter.label_names}
    if self._buffers[split]:
      self._submit(split, self._buffers[split])
      self._buffers[split] = []
    blobs = list(self._encoder.encode_users(user_ids, lengths, ids, labels))
    self._bytes[split] += sum(map(len, blobs))
    self._submit(split, blobs)

  def _drain(self) -> None:
    """Waits for the writer thread; raises what it raised."""
    for s, buffer in self._buffers.items():
      if buffer:
        self._submit(s, buffer)
        self._buffers[s] = []
    while self._pending:
      self._pending.popleft().result()
    self._pool.shutdown()
    if self._process is not None:
      self._process.close()

  def abort(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
    if self._process is not None:
      self._process.abort()
    for f in self._files.values():
      f.close()
    shutil.rmtree(self._tmp, ignore_errors=True)

  def _split_info(self, split: str) -> "object":
    """The split's shard files (cut from its stream file when there was no plan); its tfds SplitInfo."""
    from array_record.python import array_record_module
    files, n = self._files[split], self._counters[split].users
    if files.ends is None:
      ends, stream = self._shard_ends(split, n, self._bytes[split]), self._path(split, 0, 1)
      if len(ends) > 1:
        reader, start = array_record_module.ArrayRecordReader(stream, "readahead_buffer_size:16777216"), 0
        for shard, end in enumerate(ends):
          writer = array_record_module.ArrayRecordWriter(self._path(split, shard, len(ends)),
                                                         shards.WRITER_OPTIONS)
          for a in range(start, end, 4096):
            for data in reader.read(a, min(a + 4096, end)):
              writer.write(data)
          writer.close()
          start = end
        reader.close()
        os.remove(stream)
    elif files.written != files.ends[-1] or n != files.ends[-1]:
      raise ValueError(f"split {split!r}: {n} records written where the writer's sizes said {files.ends[-1]}")
    else:
      ends = files.ends
    lengths = np.diff([0, *ends]).tolist()
    return store.import_tfds().core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=sum(
        os.path.getsize(self._path(split, i, len(ends))) for i in range(len(ends))))

  def finish(self, *, stats: dict | None = None, source: dict | None = None) -> dict:
    """Writes the metadata and renames the data set onto `out_dir`; returns its schema.json contents."""
    try:
      self._drain()
      for s, c in self._counters.items():
        c.flush()
        self._files[s].close()
        if c.users == 0:
          raise ValueError(f"split {s!r} has no users; give it more input (or a larger fraction of the users)")
      split_infos = [self._split_info(s) for s in self._counters]
      with _quiet_tfds():
        store.import_tfds().folder_dataset.write_metadata(
            data_dir=self._data_dir, features=tfds_features([f["name"] for f in self.features], tuple(self.labels)),
            split_infos=split_infos, filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            check_data=False, disable_shuffling=True, description="gpt_ads prepared events")
      train = self._counters["train"]
      meta = {
          "format": FORMAT,
          "tfds_dir": os.path.relpath(self._data_dir, self._tmp),
          "features": [{**f, "counts": train.counts[f["name"]].tolist()} for f in self.features],
          "labels": self.labels,
          "splits": {s: {"users": c.users, "events": c.events, "max_events": c.max_events}
                     for s, c in self._counters.items()},
          "stats": stats or {},
          "source": source or {},
      }
      with open(os.path.join(self._tmp, SCHEMA_FILE), "w") as fh:
        fh.write(_schema_text(meta))
      if os.path.exists(self.out_dir):
        shutil.rmtree(self.out_dir)
      os.replace(self._tmp, self.out_dir)
    except BaseException:
      self.abort()
      raise
    return meta


def write(out_dir: str, *, features: list[dict], splits: dict[str, Callable[[], Iterable[dict]]],
          labels: dict | None = None, stats: dict | None = None, source: dict | None = None,
          overwrite: bool = False, num_shards: int = 0) -> dict:
  """Writes a prepared data set to `out_dir` atomically (a `Writer`); returns its schema.json contents.

  Args:
    splits: {split: () -> iterable of records} for split in SPLITS ("train" required); each is iterated once.
    features, labels, overwrite, num_shards: as `Writer`'s.
  """
  with Writer(out_dir, features=features, labels=labels, splits=splits, overwrite=overwrite,
              num_shards=num_shards) as w:
    for s, records_of in splits.items():
      for record in records_of():
        w.add(s, record)
    return w.finish(stats=stats, source=source)


def _schema_text(meta: dict) -> str:
  """schema.json's text: one line per top-level key and per feature (json's C encoder: an indented dump of
  a million-value vocabulary takes seconds in the pure-Python one)."""
  def line(key, value):
    if key == "features":
      return '"features": [\n  ' + ",\n  ".join(json.dumps(f) for f in value) + "\n ]"
    return f"{json.dumps(key)}: {json.dumps(value)}"
  return "{\n " + ",\n ".join(line(k, v) for k, v in meta.items()) + "\n}\n"


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS logs at INFO and prints banners; keep them out of the user's terminal."""
  logger = py_logging.getLogger("absl")
  level = logger.level
  logger.setLevel(py_logging.WARNING)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logger.setLevel(level)

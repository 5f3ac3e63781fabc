"""The prepared data set directory: `schema.json` + one TFDS ArrayRecord data set holding every split.

    DIR/schema.json                      what the data is (read by training, evaluation and downstream tools)
    DIR/tfds/gpt_ads_events/1.0.0/...    the records, written by `EventsBuilder` (readable with tfds.data_source)

One record per user: {"user_id": str, <feature>: int32 [n] ids (NUM_RESERVED.. real values, OOV_ID unknown,
never PAD), "labels": {<label>: float32} (only when the data set has labels)}, events in time order.

schema.json (format "gpt_ads.prepared/2"):
  features  [{name, vocab_size, loss, counts (per id, over TRAINING events), vocabulary {kind, ...}, ...}] in
            schema order; `vocabulary` says how raw values map to ids (see gpt_ads.data.prepare);
  labels    {name: {kind: "numeric"} | {kind: "categorical", classes: [...]}} (class i is stored as float i);
  splits    {split: {users, events, max_events}};
  stats     what the writer of the data set dropped or changed, with counts (free-form, documented by it);
  source    where the data came from (free-form).

`write` is atomic: everything goes to a temporary sibling directory that is renamed onto DIR at the end, so a
failed or interrupted run never leaves a half-written data set behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging as py_logging
import os
import shutil
import tempfile
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

from gpt_ads import features as features_lib

FORMAT = "gpt_ads.prepared/2"  # 2: ids stored as raw int32 bytes
SCHEMA_FILE = "schema.json"
SPLITS = ("train", "validation", "test")
TFDS_NAME, TFDS_VERSION = "gpt_ads_events", "1.0.0"


def _tfds():
  import tensorflow_datasets as tfds  # heavy import: only where data sets are written or read
  return tfds


def _builder_class():
  """The TFDS builder (created lazily, once: TFDS registers builder classes by name)."""
  global _BUILDER
  if _BUILDER is None:
    tfds = _tfds()

    class EventsBuilder(tfds.core.GeneratorBasedBuilder):
      """User event sequences; features and labels come from the constructor (the schema)."""
      name = TFDS_NAME
      VERSION = tfds.core.Version(TFDS_VERSION)
      RELEASE_NOTES = {TFDS_VERSION: "gpt_ads prepared events"}
      # Records stay in generation order (the input pipeline shuffles); TFDS's on-disk shuffle would cost
      # about as much as writing.
      disable_shuffling = True

      def __init__(self, *, feature_names=(), label_names=(), split_records=None, **kwargs):
        self._feature_names, self._label_names = tuple(feature_names), tuple(label_names)
        self._split_records = split_records or {}
        super().__init__(**kwargs)

      def _info(self):
        feats = {"user_id": tfds.features.Text()}
        feats.update({n: tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES)
                      for n in self._feature_names})  # raw int32 bytes: ~20% faster to write, cheap to decode
        if self._label_names:
          feats["labels"] = tfds.features.FeaturesDict(
              {n: tfds.features.Scalar(dtype=np.float32) for n in self._label_names})
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(feats))

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._split_records}

      def _generate_examples(self, split):
        for i, record in enumerate(self._split_records[split]()):
          yield f"{i:012d}", record

    _BUILDER = EventsBuilder
  return _BUILDER


_BUILDER = None


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
    self._pending: list[dict] = []

  def wrap(self, records: Iterable[dict]) -> Iterator[dict]:
    for record in records:
      yield self.check(record)
    self._flush()

  def _where(self, user_id) -> str:
    return f"split {self.split!r}, user {user_id!r}"

  def check(self, record: dict) -> dict:
    out = {"user_id": str(record["user_id"])}
    n = None
    for f in self.features:
      name = f["name"]
      if name not in record:
        raise ValueError(f"{self._where(out['user_id'])}: record has no feature {name!r}")
      ids = np.asarray(record[name])
      if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{self._where(out['user_id'])}, feature {name!r}: ids must be a 1-D integer array, got "
                         f"{ids.dtype}{ids.shape}")
      n = len(ids) if n is None else n
      if len(ids) != n or n == 0:
        raise ValueError(f"{self._where(out['user_id'])}: every feature needs the same, non-zero number of events")
      out[name] = ids if ids.dtype == np.int32 else ids.astype(np.int32)
    if self.label_names:
      labels = record.get("labels", {})
      out["labels"] = {k: np.float32(labels.get(k, np.nan)) for k in self.label_names}
    self.users, self.events, self.max_events = self.users + 1, self.events + n, max(self.max_events, n)
    self._pending.append(out)
    if len(self._pending) >= self.FLUSH_USERS:
      self._flush()
    return out

  def _flush(self) -> None:
    pending, self._pending = self._pending, []
    if not pending:
      return
    for f in self.features:
      name, v = f["name"], f["vocab_size"]
      ids = np.concatenate([r[name] for r in pending])
      if ids.min() < features_lib.OOV_ID or ids.max() >= v:
        bad = next(r for r in pending if r[name].min() < features_lib.OOV_ID or r[name].max() >= v)
        raise ValueError(f"{self._where(bad['user_id'])}, feature {name!r}: ids must lie in "
                         f"[{features_lib.OOV_ID}, {v}), got [{bad[name].min()}, {bad[name].max()}]")
      if self.split == "train":
        self.counts[name] += np.bincount(ids, minlength=v)


def write(out_dir: str, *, features: list[dict], splits: dict[str, Callable[[], Iterable[dict]]],
          labels: dict | None = None, stats: dict | None = None, source: dict | None = None,
          overwrite: bool = False, num_shards: int = 0) -> dict:
  """Writes a prepared data set to `out_dir` atomically; returns its schema.json contents.

  Args:
    features: [{name, vocab_size, loss, vocabulary, ...}] in schema order (extra keys are kept); `counts` is
      computed here from the train split.
    splits: {split: () -> iterable of records} for split in SPLITS (callables: TFDS may iterate more than once).
    labels: {name: {kind, ...}} of the per-user labels every record carries (missing values: NaN).
    overwrite: replace an existing data set at `out_dir` (otherwise that is an error).
    num_shards: ArrayRecord files per split (hosts reading disjoint files: `SplitSource.input_shard_keys`);
      0 = TFDS's rule from the data size (files of 64 MiB to 1 GiB; one file for a split under 64 MiB).
  """
  out_dir = os.path.abspath(out_dir)
  unknown = sorted(set(splits) - set(SPLITS))
  if unknown or "train" not in splits:
    raise ValueError(f"splits must include 'train' and be among {SPLITS}; got {sorted(splits)}")
  if os.path.exists(out_dir) and not overwrite:
    raise ValueError(f"{out_dir} already exists; choose another --output or remove it first")
  if num_shards < 0:
    raise ValueError(f"--num_shards={num_shards}: give 0 (from the data size) or a positive number of files")
  for f in features:
    features_lib.FeatureSpec(name=f["name"], vocab_size=int(f["vocab_size"]), loss=f["loss"])  # validates
  labels = dict(labels or {})
  label_names = tuple(labels)
  counters = {s: _SplitCounter(s, features, label_names) for s in splits}

  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the data set is as readable as any new directory
  try:
    builder = _builder_class()(
        feature_names=[f["name"] for f in features], label_names=label_names,
        split_records={s: (lambda s=s: counters[s].wrap(splits[s]())) for s in splits},
        data_dir=os.path.join(tmp, "tfds"), file_format="array_record")
    with _quiet_tfds():
      try:
        builder.download_and_prepare(download_config=_tfds().download.DownloadConfig(
            try_download_gcs=False, num_shards=num_shards or None))
      except AssertionError as e:  # TFDS: a split with fewer records than files
        if "number_of_shards" not in str(e):
          raise
        raise ValueError(f"--num_shards={num_shards}: {e}; every split needs at least as many users as files, "
                         "so give a smaller --num_shards (or 0: from the data size)") from None
    shutil.rmtree(os.path.join(tmp, "tfds", "downloads"), ignore_errors=True)
    meta = {
        "format": FORMAT,
        "tfds_dir": os.path.relpath(builder.data_dir, tmp),
        "features": [{**f, "counts": counters["train"].counts[f["name"]].tolist()} for f in features],
        "labels": labels,
        "splits": {s: {"users": c.users, "events": c.events, "max_events": c.max_events}
                   for s, c in counters.items()},
        "stats": stats or {},
        "source": source or {},
    }
    for s, c in counters.items():
      if c.users == 0:
        raise ValueError(f"split {s!r} has no users; give it more input (or a larger fraction of the users)")
    with open(os.path.join(tmp, SCHEMA_FILE), "w") as fh:
      json.dump(meta, fh, indent=1)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return meta


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS logs a banner and progress bars per split at INFO; keep them out of the user's terminal."""
  tfds = _tfds()
  logger = py_logging.getLogger("absl")
  level = logger.level
  logger.setLevel(py_logging.WARNING)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # "Downloading and preparing dataset ..." banners
      yield
  finally:
    logger.setLevel(level)


@dataclasses.dataclass
class Prepared:
  """A prepared data set opened for reading.

  Attributes:
    path: the directory; meta: the contents of its schema.json.
  """
  path: str
  meta: dict

  @property
  def feature_names(self) -> tuple[str, ...]:
    return tuple(f["name"] for f in self.meta["features"])

  @property
  def label_names(self) -> tuple[str, ...]:
    return tuple(self.meta.get("labels", {}))

  def feature(self, name: str) -> dict:
    for f in self.meta["features"]:
      if f["name"] == name:
        return f
    raise KeyError(f"{self.path}: no feature {name!r}; it has {self.feature_names}")

  def counts(self) -> dict[str, np.ndarray]:
    """{feature: int64 [vocab_size]} value counts over training events."""
    return {f["name"]: np.asarray(f["counts"], np.int64) for f in self.meta["features"]}

  def _builder(self):
    return _tfds().builder_from_directory(os.path.join(self.path, self.meta["tfds_dir"]))

  def _check_split(self, split: str) -> None:
    if split not in self.meta["splits"]:
      raise ValueError(f"{self.path}: no split {split!r}; it has {sorted(self.meta['splits'])}")

  def tfds_source(self, split: str):
    """The split as TFDS itself reads it (`tfds.data_source`): len(), [i] -> record dict."""
    self._check_split(split)
    return self._builder().as_data_source(split=split)

  def source(self, split: str) -> "SplitSource":
    """The split as a fast random-access source (same files and records as `tfds_source`)."""
    self._check_split(split)
    instructions = self._builder().info.splits[split].file_instructions
    return SplitSource([(fi.filename, fi.skip, fi.take) for fi in instructions], self.feature_names,
                       self.label_names)


class SplitSource:
  """Random access to one split's user records, read in batches: {feature: int32 [n], "user_id": bytes,
  "labels": {name: float}}.

  Reads the TFDS ArrayRecord shards directly (`read(positions)` per shard) and decodes the tf.Example protos
  with protobuf: ~0.1 ms per user here, against ~0.7 ms through `tfds.data_source` (one read per record, and
  TFDS's TensorFlow-free decoder). `__getitems__` is the batched read (grain and gpt_ads.data.pipeline use it).
  """

  def __init__(self, shards: list[tuple[str, int, int]], feature_names, label_names):
    self._shards = shards  # (filename, first record, number of records)
    self._names, self._labels = tuple(feature_names), tuple(label_names)
    self._ends = np.cumsum([take for _, _, take in shards])
    self._readers = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def head(self, n: int) -> "SplitSource":
    """The first `n` users of the split (all when n >= len): a smaller training set, e.g. for data scaling."""
    shards, left = [], n
    for filename, skip, take in self._shards:
      if left <= 0:
        break
      shards.append((filename, skip, min(take, left)))
      left -= take
    return SplitSource(shards, self._names, self._labels)

  def input_shard_keys(self, shard: int, num_shards: int) -> np.ndarray:
    """Record keys of input shard `shard` of `num_shards` (gpt_ads.data.pipeline): whole files (files
    shard, shard + num_shards, ...) when the split's files divide evenly among the input shards, so that each
    host opens only its own files; otherwise every num_shards-th record from `shard` on (all files)."""
    files = len(self._shards)
    if num_shards > 1 and files % num_shards == 0:
      starts = self._ends - np.array([take for _, _, take in self._shards])
      return np.concatenate([np.arange(starts[i], self._ends[i]) for i in range(shard, files, num_shards)])
    return np.arange(len(self))[shard::num_shards]

  def files_read(self) -> list[str]:
    """The files this source (in this process) has opened so far."""
    with self._lock:
      return sorted(self._shards[s][0] for s in self._readers)

  def __getstate__(self):  # picklable for grain worker processes: readers are reopened there
    return {k: v for k, v in self.__dict__.items() if k not in ("_readers", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state, _readers={}, _lock=threading.Lock())

  def _reader(self, shard: int):
    with self._lock:
      if shard not in self._readers:
        from array_record.python import array_record_module
        self._readers[shard] = array_record_module.ArrayRecordReader(
            self._shards[shard][0], "readahead_buffer_size:0", file_reader_buffer_size=32768)
      return self._readers[shard]

  def __getitem__(self, key: int) -> dict:
    return self._getitems([key])[0]

  def __getitems__(self, keys) -> list[dict]:
    return self._getitems(keys)

  def _getitems(self, keys) -> list[dict]:
    keys = np.asarray(keys, np.int64)
    if len(keys) and (keys.min() < 0 or keys.max() >= len(self)):
      raise IndexError(f"record keys must lie in [0, {len(self)})")
    shard = np.searchsorted(self._ends, keys, side="right")
    raw = [b""] * len(keys)
    for s in np.unique(shard):
      at = np.flatnonzero(shard == s)
      start = self._ends[s] - self._shards[s][2]
      positions = (keys[at] - start + self._shards[s][1]).tolist()
      for i, record in zip(at, self._reader(int(s)).read(positions)):
        raw[i] = record
    return [self._decode(r) for r in raw]

  def _decode(self, serialized: bytes) -> dict:
    from tensorflow_datasets.proto import tf_example_pb2
    f = tf_example_pb2.Example.FromString(serialized).features.feature
    out = {k: np.frombuffer(f[k].bytes_list.value[0], "<i4").astype(np.int32) for k in self._names}
    out["user_id"] = f["user_id"].bytes_list.value[0]
    if self._labels:
      out["labels"] = {k: float(f[f"labels/{k}"].float_list.value[0]) for k in self._labels}
    return out


def open_dir(path: str) -> Prepared:
  """Opens a prepared data set; a clear error when `path` is not one."""
  path = os.path.abspath(path)
  schema_file = os.path.join(path, SCHEMA_FILE)
  if not os.path.isfile(schema_file):
    raise ValueError(f"{path}: not a prepared data set (no {SCHEMA_FILE}); make one with gpt-ads-prepare")
  try:
    with open(schema_file) as fh:
      meta = json.load(fh)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{schema_file}: unreadable ({e}); prepare the data set again") from None
  if meta.get("format") != FORMAT:
    raise ValueError(f"{schema_file}: format {meta.get('format')!r} is not {FORMAT!r}; prepare the data set again")
  return Prepared(path=path, meta=meta)

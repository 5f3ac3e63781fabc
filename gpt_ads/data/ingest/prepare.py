"""The orchestration of gpt-ads-prepare: validate the options, read, clean, split users, encode, write.

Splits: a user goes to test / validation / train by u = blake2b-64(f"{split_seed}:{user_id}") / 2**64:
u < test_fraction -> test, u < test_fraction + val_fraction -> validation, else train (`user_split`). With
--test_input the users of those files are the test split (their events come from those files only) and
u < val_fraction picks validation among the --input users.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import time as time_lib
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt_ads import features as features_lib
from gpt_ads.data import records, store
from gpt_ads.data import writer as writer_lib
from gpt_ads.data.ingest import beam_engine
from gpt_ads.data.ingest.clean import POLICY, clean, segments
from gpt_ads.data.ingest.codes import Encoder
from gpt_ads.data.ingest.events import Events, read_events
from gpt_ads.data.ingest.labels import read_labels
from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.read import MISSING, check_file, csv_delimiter, expand_inputs
from gpt_ads.data.ingest.spill import Part, Runs, narrow
from gpt_ads.data.ingest.timestamps import DERIVED, TIME_UNITS, derived_feature
from gpt_ads.data.ingest.vocab import check_reusable, encode_feature, reuse_feature, stable_hashes


def user_splits(user_ids: list[str], *, seed: int = 0, val_fraction: float = 0.05,
                test_fraction: float = 0.05) -> np.ndarray:
  """str [n]: the split of each user, "train", "validation" or "test" (pass test_fraction=0 with --test_input)."""
  u = stable_hashes(user_ids, f"{seed}:").astype(np.float64) / 2.0**64  # = stable_hash(...) / 2.0**64, exactly
  return np.where(u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "validation", "train"))


def user_split(user_id: str, *, seed: int = 0, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
  """The split of one user (`user_splits`)."""
  return str(user_splits([user_id], seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)[0])


def validate(o: PrepareOptions) -> None:
  """Rejects inconsistent options (and missing input files) before anything is read."""
  if not o.input or not o.user_col or not o.time_col or not o.features or not o.output:
    raise ValueError("--input, --user_col, --time_col, --features and --output are all required")
  columns = [o.user_col, o.time_col, *o.features]
  if len(set(columns)) != len(columns):
    raise ValueError(f"--features {o.features} must be distinct columns, other than --user_col and --time_col")
  for flag, names in (("sampled", o.sampled), ("hash_buckets", o.hash_buckets),
                      ("max_vocab", o.max_vocab if isinstance(o.max_vocab, dict) else {}),
                      ("min_count", o.min_count if isinstance(o.min_count, dict) else {})):
    unknown = sorted(set(names) - set(o.features) - {"*"})
    if unknown:
      raise ValueError(f"--{flag} names {unknown}, which are not among --features {o.features}")
  bad = [k for k in o.derive_time if k not in DERIVED]
  if bad or len(set(o.derive_time)) != len(o.derive_time):
    raise ValueError(f"--derive_time={','.join(o.derive_time)}: use distinct values among {sorted(DERIVED)}")
  clash = sorted({DERIVED[k] for k in o.derive_time} & set(o.features))
  if clash:
    raise ValueError(f"--features {clash} clash with the derived time features; rename the columns")
  if o.time_unit not in TIME_UNITS or o.format not in ("auto", "csv", "parquet"):
    raise ValueError(f"--time_unit must be one of {list(TIME_UNITS)} and --format one of auto, csv, parquet")
  test = 0.0 if o.test_input else o.test_fraction
  if not (0 <= o.val_fraction and 0 <= test and o.val_fraction + test < 1):
    raise ValueError(f"--val_fraction={o.val_fraction} and --test_fraction={test} must be >= 0 and sum below 1")
  if o.delimiter and len(csv_delimiter("", o.delimiter)) != 1:
    raise ValueError(f"--delimiter={o.delimiter!r} must be one character (or \\t)")
  if (o.min_events < 1 or o.gap_buckets < 2 or o.batch_rows < 1 or min(o.hash_buckets.values(), default=1) < 1
      or o.num_shards < 0 or o.spill_events < 1):
    raise ValueError("--min_events and --batch_rows must be >= 1, --gap_buckets >= 2, --hash_buckets N >= 1, "
                     "--num_shards >= 0 (and spill_events >= 1)")
  if os.path.exists(o.output) and not o.overwrite:
    raise ValueError(f"{os.path.abspath(o.output)} already exists; choose another --output or pass --overwrite")
  if o.vocab_from:
    check_reusable(o, reused_features(o))
  if o.beam_pipeline_options:
    beam_engine.pipeline_args(o.beam_pipeline_options)
  # Before a long read: a typo in the last file fails now.
  files = [f for f, _ in expand_inputs(o.input, "--input") + expand_inputs(o.test_input, "--test_input")]
  for path in files + o.labels:
    check_file(path)


def reused_features(o: PrepareOptions) -> dict[str, dict]:
  """{name: feature dict} of the --vocab_from data set's schema.json ({} without --vocab_from)."""
  if not o.vocab_from:
    return {}
  return {f["name"]: f for f in store.open_dir(o.vocab_from).meta["features"]}


class _Kept:
  """The cleaned ranges of users (pass 2), saved next to the runs: each user's split, the training value counts.

  Attributes:
    users, events: {split: count}; counts: {column: int64 [value codes]} over training events;
    shapes: {(split, events, user id bytes): users} (what the records' sizes are computed from: `sizes`).
  """

  def __init__(self, ev: Events, o: PrepareOptions):
    self.ev, self.o, self.paths = ev, o, []
    self.users, self.events = dict.fromkeys(store.SPLITS, 0), dict.fromkeys(store.SPLITS, 0)
    self.counts = {c: np.zeros(len(ev.encoders[c]), np.int64) for c in o.features}
    self.shapes: collections.Counter = collections.Counter()

  def add(self, part: Part, lo: int, hi: int) -> None:
    """Adds the cleaned users of code range [lo, hi)."""
    o, index, names = self.o, len(self.paths), self.ev.users.slice(lo, hi)
    starts, lengths = segments(part.user)  # [users]
    user_codes = part.user[starts]
    user_ids = [names[u] for u in (user_codes - lo).tolist()]
    split = user_splits(user_ids, seed=o.split_seed, val_fraction=o.val_fraction,
                        test_fraction=0.0 if o.test_input else o.test_fraction).astype("<U10")
    split[self.ev.in_test[user_codes]] = "test"
    id_bytes = pc.binary_length(pa.array(user_ids, pa.string())).to_numpy().tolist()
    self.shapes.update(zip(split.tolist(), lengths.tolist(), id_bytes))
    for s in store.SPLITS:
      self.users[s] += int((split == s).sum())
      self.events[s] += int(lengths[split == s].sum())
    train = np.repeat(split == "train", lengths)  # [events]
    for c, codes in part.values.items():
      more = np.bincount(codes[train & (codes >= 0)], minlength=len(self.counts[c]))
      self.counts[c] = np.pad(self.counts[c], (0, len(more) - len(self.counts[c]))) + more  # (Beam: codes grow)
    first = np.zeros(len(part.user), bool)
    first[starts] = True
    derived = [derived_feature(kind, part.time, first, o.gap_buckets)[0] for kind in o.derive_time]
    path = os.path.join(self.ev.runs.dir, f"kept-{index:05d}")
    os.makedirs(path)
    arrays = [user_codes, split, lengths, *(part.values[c] for c in o.features), *derived]
    for i, array in enumerate(arrays):  # plain .npy files (an .npz costs a CRC and a copy of every byte)
      np.save(os.path.join(path, f"{i}.npy"), narrow(array) if i >= 3 else array)
    self.paths.append((path, lo, hi))

  def load(self, path: str) -> dict[str, np.ndarray]:
    """A range saved by `add`: per user "users" (codes), "split", "lengths"; per event int32 "value:<column>"
    (value codes) and "<derived feature>" (its ids)."""
    names = ["users", "split", "lengths", *(f"value:{c}" for c in self.o.features),
             *(DERIVED[kind] for kind in self.o.derive_time)]
    arrays = [np.load(os.path.join(path, f"{i}.npy")) for i in range(len(names))]
    return {name: a.astype(np.int32) if i >= 3 else a for i, (name, a) in enumerate(zip(names, arrays))}

  def sizes(self, feature_names: list[str], label_names) -> dict[str, tuple[int, int]]:
    """{split: (users, bytes of their encoded records)} (writer_lib.Writer's `sizes`)."""
    encoder, out = records.Encoder(feature_names, label_names), {s: [0, 0] for s in store.SPLITS}
    for (s, events, id_bytes), users in self.shapes.items():
      out[s][0] += users
      out[s][1] += users * encoder.size(events, id_bytes)
    return {s: (users, size) for s, (users, size) in out.items()}

  def check(self, stats: dict) -> None:
    """An error when no events are left or a split has no users."""
    total = sum(self.users.values())
    if total == 0:
      dropped = ", ".join(f"{k}={v:,}" for k, v in stats["rows_dropped"].items() if v)
      raise ValueError(f"no events left: {stats['input_rows']:,} rows read, dropped: {dropped or 'none'}; check "
                       "--user_col / --time_col / --min_events against the files")
    for s in store.SPLITS:
      if not self.users[s]:
        hint = ("lower --val_fraction / --test_fraction" if s == "train" else
                f"raise --{'val' if s == 'validation' else s}_fraction")
        raise ValueError(f"the {s} split has no users ({total} users kept in all); give more users or {hint}")


def _features(ev: Events, kept: _Kept, o: PrepareOptions) -> tuple[list[dict], dict[str, np.ndarray]]:
  """(schema feature dicts: the --features, then the --derive_time ones; {column: lut value code -> id})."""
  feats, luts = [], {}
  prior = reused_features(o)
  for c in o.features:
    values = ev.encoders[c].values
    counts = np.pad(kept.counts[c], (0, len(values) - len(kept.counts[c])))
    luts[c], feature = reuse_feature(c, values, prior[c], o) if prior else encode_feature(c, counts, values, o)
    feats.append(feature)
  for kind in o.derive_time:
    name = DERIVED[kind]
    _, vocab, size = derived_feature(kind, np.zeros(0, np.int64), np.zeros(0, bool), o.gap_buckets)
    if name in prior and prior[name]["vocab_size"] != size:
      raise ValueError(f"--vocab_from={o.vocab_from}: its {name!r} has {prior[name]['vocab_size']} ids, this run's "
                       f"{size}; use the --gap_buckets it was prepared with")
    feats.append({"name": name, "vocab_size": size, "loss": "softmax", "vocabulary": vocab,
                  "source": f"derived:{kind}"})
  return feats, luts


def _write_records(out: writer_lib.Writer, ev: Events, kept: _Kept, luts: dict[str, np.ndarray], label_specs: dict,
                   label_values: dict[str, np.ndarray], o: PrepareOptions, stats: dict,
                   log: Callable[[str], None]) -> None:
  """Pass 3: each kept user's record, in user-code order, to its split."""
  start, done = time_lib.time(), 0
  for path, lo, hi in kept.paths:
    names = ev.users.slice(lo, hi)
    part = kept.load(path)
    users, lengths, split = part["users"], part["lengths"], part["split"]
    train = np.repeat(split == "train", lengths)
    ids = {}
    for c in o.features:
      ids[c] = luts[c][part[f"value:{c}"]]
      stats["oov_events"][c] += int((ids[c][train] == features_lib.OOV_ID).sum())
    for kind in o.derive_time:
      ids[DERIVED[kind]] = part[DERIVED[kind]]
    index = np.zeros(len(split), np.int8)  # [users] the index of each user's split in store.SPLITS
    for i, s in enumerate(store.SPLITS):
      index[split == s] = i
    order = np.argsort(np.repeat(index, lengths), kind="stable")  # the events grouped by split, in user order
    ids = {f: v[order] for f, v in ids.items()}
    a = 0
    for i, s in enumerate(store.SPLITS):
      of_split = index == i
      b = a + int(lengths[of_split].sum())
      labels = {name: v[users[of_split]] for name, v in label_values.items()} if label_specs else None
      out.add_users(s, [names[u - lo] for u in users[of_split].tolist()], lengths[of_split],
                    {f: v[a:b] for f, v in ids.items()}, labels)
      a = b
    done += int(lengths.sum())
    log(f"written {done:,} events ({done / max(time_lib.time() - start, 1e-9):,.0f} events/s)")


def _from_beam(o: PrepareOptions, stats: dict, log: Callable[[str], None], runs: Runs) -> tuple[Events, _Kept]:
  """Passes 1 and 2 on Apache Beam (gpt_ads.data.ingest.beam_engine): the cleaned users come back in order of
  first appearance and go into the same ranges of at most spill_events events as the local engine's."""
  ev = Events(runs=runs, users=Encoder(MISSING), encoders={c: Encoder(MISSING) for c in o.features},
              in_test=np.zeros(0, bool))
  kept, pending, lo = _Kept(ev, o), [], 0

  def add_range() -> None:
    nonlocal pending, lo
    if pending:
      hi = pending[-1][0] + 1
      lengths = [len(times) for _, times, _ in pending]
      part = Part(user=np.repeat([code for code, _, _ in pending], lengths).astype(np.int32),
                  time=np.concatenate([times for _, times, _ in pending]).astype(np.int64),
                  values={c: ev.encoders[c].encode(pa.array(
                      list(itertools.chain.from_iterable(strings[j] for _, _, strings in pending)), pa.string()))
                      for j, c in enumerate(o.features)},
                  from_test=np.zeros(sum(lengths), bool))
      kept.add(part, lo, hi)
      pending, lo = [], hi

  events = 0
  for block in beam_engine.cleaned_users(o, stats, log, runs.dir):
    codes = ev.users.encode(pa.array([user for _, user, _, _, _ in block], pa.string())).tolist()
    ev.in_test = np.append(ev.in_test, np.array([in_test for _, _, in_test, _, _ in block], bool))
    for code, (_, _, _, times, strings) in zip(codes, block):
      if len(times):
        pending.append((code, times, strings))
        events += len(times)
      if events >= o.spill_events:
        add_range()
        events = 0
  add_range()
  return ev, kept


def prepare(options: PrepareOptions, *, log: Callable[[str], None] = lambda line: None,
            extra_source: dict | None = None) -> dict:
  """Reads, cleans, splits and encodes the events; writes the data set; returns its schema.json dict.

  Three passes, memory bounded by `options.spill_events` (gpt_ads.data.ingest.spill): read and encode the files
  into sorted runs; per range of users, clean (POLICY), split and count the training values; build the
  vocabularies, then encode and write each user's record. `log` receives progress lines; `extra_source` is
  merged into schema.json's `source` (e.g. by data builders).
  """
  o, start = options, time_lib.time()
  validate(o)
  stats = {"input_rows": 0, "duplicate_rows": 0, "users_dropped_too_few_events": 0,
           "rows_dropped": dict.fromkeys(("missing_user", "missing_time", "test_user_in_input", "duplicate",
                                          "too_few_events"), 0),
           "missing_values": dict.fromkeys(o.features, 0), "oov_events": dict.fromkeys(o.features, 0),
           "label_rows": 0}
  out = os.path.abspath(o.output)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  runs = Runs(out, o.features, o.spill_events)
  try:
    if o.beam_pipeline_options:
      ev, kept = _from_beam(o, stats, log, runs)
    else:
      ev = read_events(o, stats, log, runs)
      kept = _Kept(ev, o)
      for (lo, hi), part in runs.partitions():
        kept.add(clean(part, ev.in_test, o, stats), lo, hi)
    kept.check(stats)
    log(f"sorted and cleaned {stats['input_rows']:,} rows into {len(kept.paths)} range(s) of users "
        f"({time_lib.time() - start:.1f}s)")
    feats, luts = _features(ev, kept, o)
    label_specs, label_values = read_labels(o.labels, o, ev.users.codes, stats) if o.labels else ({}, {})
    stats["users"], stats["events"] = kept.users, kept.events
    stats["policy"] = {**POLICY, "split": f"user_split(user_id, seed={o.split_seed}): blake2b-64 of "
                                          f"'{o.split_seed}:<user_id>' / 2**64 (see gpt_ads.data.prepare)"}
    source = {"inputs": [os.path.abspath(p) for p in o.input],
              "test_inputs": [os.path.abspath(p) for p in o.test_input],
              "labels": [os.path.abspath(p) for p in o.labels], "user_col": o.user_col, "time_col": o.time_col,
              "flags": {k: v for k, v in dataclasses.asdict(o).items() if k != "beam_pipeline_options"},
              **(extra_source or {})}
    log(f"writing {out} ...")
    sizes = kept.sizes([f["name"] for f in feats], tuple(label_specs))
    with writer_lib.Writer(o.output, features=feats, labels=label_specs, overwrite=o.overwrite,
                           num_shards=o.num_shards, sizes=sizes) as writer:
      _write_records(writer, ev, kept, luts, label_specs, label_values, o, stats, log)
      meta = writer.finish(stats=stats, source=source)
  finally:
    runs.close()
  dropped = ", ".join(f"{k}={v:,}" for k, v in stats["rows_dropped"].items() if v)
  log("; ".join(f"{s}: {stats['users'][s]:,} users / {stats['events'][s]:,} events" for s in store.SPLITS)
      + f"; rows dropped: {dropped or 'none'}; users dropped (too few events): "
      f"{stats['users_dropped_too_few_events']:,}; wrote {out} in {time_lib.time() - start:.1f}s")
  return meta

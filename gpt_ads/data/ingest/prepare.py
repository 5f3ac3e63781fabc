"""The orchestration of gpt-ads-prepare: validate the options, read, clean, split users, encode, write.

Splits: a user goes to test / validation / train by u = blake2b-64(f"{split_seed}:{user_id}") / 2**64:
u < test_fraction -> test, u < test_fraction + val_fraction -> validation, else train (`user_split`). With
--test_input the users of those files are the test split (their events come from those files only) and
u < val_fraction picks validation among the --input users.
"""

from __future__ import annotations

import dataclasses
import os
import time as time_lib
from typing import Callable

import numpy as np

from gpt_ads import features as features_lib
from gpt_ads.data import store
from gpt_ads.data.ingest.clean import POLICY, clean, segments
from gpt_ads.data.ingest.events import Events, read_events
from gpt_ads.data.ingest.labels import read_labels
from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.read import check_file, csv_delimiter, expand_inputs
from gpt_ads.data.ingest.timestamps import DERIVED, TIME_UNITS, derived_feature
from gpt_ads.data.ingest.vocab import check_reusable, encode_feature, reuse_feature, stable_hash


def user_split(user_id: str, *, seed: int = 0, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
  """The split of a user: "train", "validation" or "test" (pass test_fraction=0 with --test_input)."""
  u = stable_hash(f"{seed}:{user_id}") / 2.0**64
  return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"


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
      or o.num_shards < 0):
    raise ValueError("--min_events and --batch_rows must be >= 1, --gap_buckets >= 2, --hash_buckets N >= 1, "
                     "--num_shards >= 0")
  if os.path.exists(o.output) and not o.overwrite:
    raise ValueError(f"{os.path.abspath(o.output)} already exists; choose another --output or pass --overwrite")
  if o.vocab_from:
    check_reusable(o, reused_features(o))
  # Before a long read: a typo in the last file fails now.
  files = [f for f, _ in expand_inputs(o.input, "--input") + expand_inputs(o.test_input, "--test_input")]
  for path in files + o.labels:
    check_file(path)


@dataclasses.dataclass
class _Users:
  """The kept users, in user-sorted order of `order` (the kept event rows, sorted by user then time).

  Attributes:
    starts, lengths: int [users] each user's run in `order`; code: int [users] user code (ev.users.values[code]
    is the id); split: object [users] "train" / "validation" / "test".
  """
  starts: np.ndarray
  lengths: np.ndarray
  code: np.ndarray
  split: np.ndarray


def _split_users(ev: Events, order: np.ndarray, in_test: np.ndarray, o: PrepareOptions, stats: dict) -> _Users:
  """Each kept user's run and split; an error when no events are left or a split has no users."""
  starts, lengths = segments(ev.user[order])  # [users]
  seg_user, names = ev.user[order[starts]], ev.users.values  # [users] user code of each run
  split = np.array([
      "test" if in_test[u] else user_split(names[u], seed=o.split_seed, val_fraction=o.val_fraction,
                                           test_fraction=0.0 if o.test_input else o.test_fraction)
      for u in seg_user], dtype=object)  # a loop per user
  if len(seg_user) == 0:
    dropped = ", ".join(f"{k}={v:,}" for k, v in stats["rows_dropped"].items() if v)
    raise ValueError(f"no events left: {stats['input_rows']:,} rows read, dropped: {dropped or 'none'}; check "
                     "--user_col / --time_col / --min_events against the files")
  for s in store.SPLITS:
    if not (split == s).any():
      hint = ("lower --val_fraction / --test_fraction" if s == "train" else
              f"raise --{'val' if s == 'validation' else s}_fraction")
      raise ValueError(f"the {s} split has no users ({len(seg_user)} users kept in all); give more users or "
                       f"{hint}")
  return _Users(starts=starts, lengths=lengths, code=seg_user, split=split)


def reused_features(o: PrepareOptions) -> dict[str, dict]:
  """{name: feature dict} of the --vocab_from data set's schema.json ({} without --vocab_from)."""
  if not o.vocab_from:
    return {}
  return {f["name"]: f for f in store.open_dir(o.vocab_from).meta["features"]}


def _encode_features(ev: Events, order: np.ndarray, users: _Users, o: PrepareOptions,
                     stats: dict) -> tuple[list[dict], dict[str, np.ndarray]]:
  """(schema feature dicts, {feature: ids int32 [kept events]}): the --features, then the --derive_time ones."""
  train = np.repeat(users.split == "train", users.lengths)  # [events]
  feats, ids = [], {}
  prior = reused_features(o)
  for c in o.features:
    codes, values = ev.values.pop(c)[order], ev.encoders[c].values
    ids[c], feature = (reuse_feature(c, codes, values, prior[c], o) if prior else
                       encode_feature(c, codes, values, train, o))
    stats["oov_events"][c] = int((ids[c][train] == features_lib.OOV_ID).sum())
    feats.append(feature)
  first = np.zeros(len(order), bool)
  first[users.starts] = True
  for kind in o.derive_time:
    name = DERIVED[kind]
    ids[name], vocab, size = derived_feature(kind, ev.time[order], first, o.gap_buckets)
    if name in prior and prior[name]["vocab_size"] != size:
      raise ValueError(f"--vocab_from={o.vocab_from}: its {name!r} has {prior[name]['vocab_size']} ids, this run's "
                       f"{size}; use the --gap_buckets it was prepared with")
    feats.append({"name": name, "vocab_size": size, "loss": "softmax", "vocabulary": vocab,
                  "source": f"derived:{kind}"})
  return feats, ids


def _split_records(users: _Users, names: list[str], ids: dict[str, np.ndarray], label_specs: dict,
                   label_values: dict[str, np.ndarray]):
  """{split: () -> iterable of records} (what store.write takes): one record per user of the split."""
  def records(s: str):
    def generate():
      for k in np.flatnonzero(users.split == s):  # a loop per user
        a, b, u = users.starts[k], users.starts[k] + users.lengths[k], users.code[k]
        record = {"user_id": names[u], **{f: ids[f][a:b] for f in ids}}
        if label_specs:
          record["labels"] = {name: float(v[u]) for name, v in label_values.items()}
        yield record
    return generate

  return {s: records(s) for s in store.SPLITS}


def prepare(options: PrepareOptions, *, log: Callable[[str], None] = lambda line: None,
            extra_source: dict | None = None) -> dict:
  """Reads, cleans, splits and encodes the events; writes the data set; returns its schema.json dict.

  `log` receives progress lines; `extra_source` is merged into schema.json's `source` (e.g. by data builders).
  """
  o, start = options, time_lib.time()
  validate(o)
  stats = {"input_rows": 0, "duplicate_rows": 0, "users_dropped_too_few_events": 0,
           "rows_dropped": dict.fromkeys(("missing_user", "missing_time", "test_user_in_input", "duplicate",
                                          "too_few_events"), 0),
           "missing_values": dict.fromkeys(o.features, 0), "oov_events": {}, "label_rows": 0}
  ev = read_events(o, stats, log)
  order, in_test = clean(ev, o, stats)
  users = _split_users(ev, order, in_test, o, stats)
  feats, ids = _encode_features(ev, order, users, o, stats)
  label_specs, label_values = read_labels(o.labels, o, ev.users.codes, stats) if o.labels else ({}, {})
  splits = _split_records(users, ev.users.values, ids, label_specs, label_values)

  stats["users"] = {s: int((users.split == s).sum()) for s in store.SPLITS}
  stats["events"] = {s: int(users.lengths[users.split == s].sum()) for s in store.SPLITS}
  stats["policy"] = {**POLICY, "split": f"user_split(user_id, seed={o.split_seed}): blake2b-64 of "
                                        f"'{o.split_seed}:<user_id>' / 2**64 (see gpt_ads.data.prepare)"}
  source = {"inputs": [os.path.abspath(p) for p in o.input],
            "test_inputs": [os.path.abspath(p) for p in o.test_input],
            "labels": [os.path.abspath(p) for p in o.labels], "user_col": o.user_col, "time_col": o.time_col,
            "flags": dataclasses.asdict(o), **(extra_source or {})}
  out = os.path.abspath(o.output)
  log(f"writing {out} ...")
  meta = store.write(o.output, features=feats, splits=splits, labels=label_specs, stats=stats, source=source,
                     overwrite=o.overwrite, num_shards=o.num_shards)
  dropped = ", ".join(f"{k}={v:,}" for k, v in stats["rows_dropped"].items() if v)
  log("; ".join(f"{s}: {stats['users'][s]:,} users / {stats['events'][s]:,} events" for s in store.SPLITS)
      + f"; rows dropped: {dropped or 'none'}; users dropped (too few events): "
      f"{stats['users_dropped_too_few_events']:,}; wrote {out} in {time_lib.time() - start:.1f}s")
  return meta

"""gpt-ads-prepare: raw event logs (CSV / Parquet) -> a prepared data set (gpt_ads.data.store).

  gpt-ads-prepare --input=FILE[,FILE...] [--test_input=FILE[,FILE...]] --user_col=NAME --time_col=NAME
      --features=COL,COL,... [--sampled=COL,...] [--labels=FILE[,FILE...]] [--derive_time=gap,hour,weekday]
      --output=DIR

One input row is one event. Files are streamed in batches (pyarrow), each batch encoded at once into int arrays
(user code, int64 time, one value code per feature), so memory is O(events). Values are exact strings ("007"
stays "007"). Each user's events are sorted by time, stably (ties keep file order, files in the order given).

Splits: a user goes to test / validation / train by u = blake2b-64(f"{split_seed}:{user_id}") / 2**64:
u < test_fraction -> test, u < test_fraction + val_fraction -> validation, else train (`user_split`). With
--test_input the users of those files are the test split (their events come from those files only) and
u < val_fraction picks validation among the --input users.

Vocabularies come from TRAINING events only: the values seen >= min_count times, the max_vocab most frequent
(ties by value string), ids 2.. in decreasing frequency; anything else is OOV (1). --hash_buckets=COL:N
instead maps a value to 2 + (blake2b-64(value) mod N). --derive_time adds features computed from each user's
sorted times: time_gap (0 = first event, else 1 + floor(log2(1 + seconds since the previous event)), clipped
to gap_buckets - 1), hour (0-23, UTC) and weekday (0-6, Monday = 0); derived ids are 2 + bucket.

Timestamps: numbers in --time_unit (a value of digits only is a number), ISO-8601 / "YYYY-MM-DD HH:MM:SS"
strings (no zone = UTC; "Z" / "+02:00" offsets honoured), or Parquet timestamp / date columns.

Bad input (errors are ONE line naming file, row (1-based data row, header excluded) and column; exit status 2;
nothing is written to --output on error; tests/fuzz_test.py runs 70+ malformed files against this policy):
  error   file missing, a directory, empty or without data rows; no header; a needed column missing; duplicate
          header names (used or not); a malformed CSV row (wrong field count, an unterminated quote, a file cut
          mid-row); a file that cannot be read to its end (truncated .gz, damaged Parquet); an unparsable non-empty
          timestamp (text, a repeated header row, inf, out of int64 nanoseconds); non-UTF-8 bytes in the header
          or a used column (UTF-16 files included); a Parquet column of another type than string / number
          (lists, structs, all-null); a feature with no value left; no events or an empty split after dropping.
  drop    rows whose user id or timestamp is empty / null / NaN (stats.rows_dropped.missing_user|missing_time);
          exact duplicate rows (same user, time and feature values): all but the first (stats.duplicate_rows);
          users with fewer than --min_events events after that (stats.users_dropped_too_few_events);
          --input rows of users that are in --test_input (stats.rows_dropped.test_user_in_input).
  map     empty / null / NaN feature values -> OOV (stats.missing_values per column).
  keep    unsorted rows (sorted per user); negative timestamps (times before 1970); ids of any size or sign, as
          exact strings; a UTF-8 BOM; \r\n or lone \r line endings; quoted values with newlines; bytes of
          any kind in columns that are not used.
Labels (--labels): CSVs whose first column is the user id; numeric columns -> {kind: numeric}, others ->
{kind: categorical, classes} (value = class index); users without a row get NaN.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import os
import re
import sys
import time as time_lib
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt_ads import features as features_lib
from gpt_ads.data import store

DERIVED = {"gap": "time_gap", "hour": "hour", "weekday": "weekday"}  # --derive_time kind -> feature name
TIME_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}  # nanoseconds per unit
HASH = "blake2b-64: int.from_bytes(blake2b(utf8(value), digest_size=8).digest(), 'little')"
MISSING = ("", "NaN", "nan", "NAN")  # (and null) a missing value
_INT_RE, _FLOAT_RE = r"^[+-]?\d+$", r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_OFFSET_RE = r"(Z|z|[+-]\d\d:?\d\d)$"
_NS_HOUR, _NS_DAY = 3600 * 10**9, 86400 * 10**9
POLICY = {
    "missing_user_or_time": "rows whose user id or timestamp is empty, null or NaN are dropped",
    "missing_feature": "empty, null or NaN feature values map to OOV (counted in missing_values)",
    "duplicates": "exact duplicate rows (user, time, every feature value) keep only the first in file order",
    "min_events": "users with fewer than min_events events (after dropping rows) are dropped",
    "test_input": "with --test_input, --input rows of users that appear in the test files are dropped",
    "order": "events sorted by time per user, stable (ties keep file order, files in the order given)",
    "vocabulary": "training events only; count >= min_count; top max_vocab by count, ties by value; ids 2.. by "
                  "decreasing count; other values OOV (1)",
    "errors": "missing/empty files, missing columns, duplicate header names, malformed CSV rows, files that "
              "cannot be read to their end, unparsable timestamps, non-UTF-8 bytes and unsupported column types "
              "stop the run with a one-line error (nothing written)",
    "timestamps": "negative timestamps are times before 1970 and kept; inf or out-of-range ones are errors",
}


@dataclasses.dataclass
class PrepareOptions:
  """What `prepare` reads and how; mirrors the gpt-ads-prepare flags (lists instead of comma strings).

  Attributes:
    input, test_input, labels: input files (CSV / Parquet events; CSV labels).
    user_col, time_col, features: column names; `sampled` features get loss "sampled_softmax".
    output: the data set directory (must not exist unless `overwrite`).
    derive_time: any of "gap", "hour", "weekday".
    format: "auto" (by extension), "csv" or "parquet"; delimiter: None = "," ("\\t" for .tsv files).
    time_unit: unit of numeric timestamps ("s", "ms", "us", "ns").
    max_vocab, min_count: an int for every column, or {column: int} (key "*" = every other column).
    hash_buckets: {column: N}: hash those columns into N buckets instead of building a vocabulary.
    min_events: users with fewer events are dropped. gap_buckets: buckets of the derived time_gap.
    batch_rows: rows per read batch (CSV: approximately, via the block size).
  """
  input: list[str]
  user_col: str
  time_col: str
  features: list[str]
  output: str
  test_input: list[str] = dataclasses.field(default_factory=list)
  sampled: list[str] = dataclasses.field(default_factory=list)
  labels: list[str] = dataclasses.field(default_factory=list)
  derive_time: list[str] = dataclasses.field(default_factory=list)
  format: str = "auto"
  delimiter: str | None = None
  time_unit: str = "s"
  val_fraction: float = 0.05
  test_fraction: float = 0.05
  split_seed: int = 0
  max_vocab: int | dict[str, int] = 1_000_000
  min_count: int | dict[str, int] = 1
  hash_buckets: dict[str, int] = dataclasses.field(default_factory=dict)
  min_events: int = 2
  gap_buckets: int = 16
  overwrite: bool = False
  batch_rows: int = 1_000_000


def stable_hash(value: str) -> int:
  """A 64-bit hash that is the same on every machine and run (see HASH)."""
  return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


def user_split(user_id: str, *, seed: int = 0, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
  """The split of a user: "train", "validation" or "test" (pass test_fraction=0 with --test_input)."""
  u = stable_hash(f"{seed}:{user_id}") / 2.0**64
  return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"


def _per_column(spec: int | dict[str, int], column: str, default: int) -> int:
  if isinstance(spec, dict):
    return int(spec.get(column, spec.get("*", default)))
  return int(spec)


# ----------------------------------------------------------------------------------------------- reading files

def _file_format(path: str, fmt: str) -> str:
  if fmt != "auto":
    return fmt
  ext = os.path.splitext(re.sub(r"\.(gz|bz2|zst|lz4)$", "", path.lower()))[1]
  if ext in (".csv", ".tsv", ".txt"):
    return "csv"
  if ext in (".parquet", ".pq"):
    return "parquet"
  raise ValueError(f"{path}: cannot tell the format from the extension {ext!r}; pass --format=csv or parquet")


def _delimiter(path: str, delimiter: str | None) -> str:
  if not delimiter:
    return "\t" if re.search(r"\.tsv(\.\w+)?$", path.lower()) else ","
  return "\t" if delimiter in ("\\t", "tab") else delimiter


def _check_file(path: str) -> None:
  if os.path.isdir(path):
    raise ValueError(f"{path}: is a directory; give the event files in it (comma-separated) instead")
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file; check --input / --test_input / --labels")
  if os.path.getsize(path) == 0:
    raise ValueError(f"{path}: empty file; it needs a header line and data rows")


def _check_columns(path: str, names: list[str], needed: list[str]) -> None:
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"{path}: the header names column(s) {twice} more than once; rename them")
  missing = [c for c in needed if c not in names]
  if missing:
    raise ValueError(f"{path}: no column(s) {missing} (it has {names}); check --user_col/--time_col/--features")


def _csv_header(path: str, delimiter: str) -> tuple[list[str], float]:
  """The header's column names and the mean bytes per row of the first MiB (to size read blocks)."""
  _check_file(path)
  with pa.input_stream(path) as fh:  # decompresses .gz / .bz2 by extension
    head = fh.read(1 << 20)
  first, rest = (re.split(rb"\r\n|\n|\r", head, maxsplit=1) + [b""])[:2]
  try:
    line = first.decode("utf-8-sig")
  except UnicodeDecodeError:
    raise ValueError(f"{path}: row 0 (header): not UTF-8; re-encode the file as UTF-8") from None
  if not line.strip():
    raise ValueError(f"{path}: no header line; the first line must name the columns")
  try:
    names = next(csv.reader([line], delimiter=delimiter))
  except csv.Error as e:
    raise ValueError(f"{path}: row 0 (header): {e}; fix the header line") from None
  return names, len(rest) / max(rest.count(b"\n") or rest.count(b"\r"), 1)


def _csv_parse_error(path: str, delimiter: str, num_columns: int, err: Exception) -> str:
  """Finds the first row whose field count is wrong (error path only: a Python loop over the file)."""
  with pa.input_stream(path) as fh, io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline="") as text:
    reader = csv.reader(text, delimiter=delimiter)
    next(reader)
    row = 0
    for fields in reader:
      if fields:
        row += 1
        if len(fields) != num_columns:
          return (f"{path}: row {row} (line {reader.line_num}): {len(fields)} fields where the header has "
                  f"{num_columns}; fix the row or the --delimiter")
  return f"{path}: malformed CSV ({str(err).splitlines()[0]}); fix the file or the --delimiter"


def _batches(path: str, needed: list[str], options: PrepareOptions):
  """Yields record batches of the `needed` columns of one file (CSV columns as binary: exact bytes).

  A file that cannot be read to its end (truncated compression, damaged Parquet pages, I/O errors) is a
  ValueError naming it."""
  try:
    yield from _file_batches(path, needed, options)
  except (OSError, pa.ArrowException) as e:  # our own errors are plain ValueErrors, not these
    raise ValueError(f"{path}: cannot be read to its end ({' '.join(str(e).split())[:200]}); is the file complete "
                     "(not truncated) and in the format its extension / --format says?") from None


def _file_batches(path: str, needed: list[str], options: PrepareOptions):
  if _file_format(path, options.format) == "parquet":
    import pyarrow.parquet as pq
    _check_file(path)
    try:
      pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
      raise ValueError(f"{path}: not a readable Parquet file ({e}); pass --format=csv if it is CSV") from None
    _check_columns(path, pf.schema_arrow.names, needed)
    yield from pf.iter_batches(batch_size=options.batch_rows, columns=needed)
    return
  import pyarrow.csv as pacsv
  delimiter = _delimiter(path, options.delimiter)
  names, bytes_per_row = _csv_header(path, delimiter)
  _check_columns(path, names, needed)
  try:
    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(block_size=int(min(max(options.batch_rows * bytes_per_row, 1 << 16),
                                                                 1 << 30))),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(include_columns=needed,
                                             column_types={c: pa.binary() for c in needed}))
    for batch in reader:
      yield batch
  except pa.ArrowInvalid as e:
    raise ValueError(_csv_parse_error(path, delimiter, len(names), e)) from None


def _as_strings(arr: pa.Array, path: str, row0: int, col: str) -> pa.Array:
  """The column as UTF-8 strings (numbers as their decimal text); an error naming the first bad row."""
  if pa.types.is_dictionary(arr.type):
    arr = arr.dictionary_decode()
  t = arr.type
  if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
    return pc.cast(arr, pa.string())
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    arr = arr.cast(pa.binary() if pa.types.is_string(t) else pa.large_binary())  # re-validated below
  if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
    raise ValueError(f"{path}: column {col!r} has type {t}; store it as a string or a number")
  try:
    return arr.cast(pa.string() if pa.types.is_binary(arr.type) else pa.large_string())
  except pa.ArrowInvalid:
    for i, v in enumerate(arr.to_pylist()):  # error path only
      try:
        v is None or v.decode("utf-8")
      except UnicodeDecodeError:
        raise ValueError(f"{path}: row {row0 + i + 1}, column {col!r}: {v[:40]!r} is not UTF-8; re-encode the "
                         "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    raise


class _Encoder:
  """Maps the exact strings of one column to dense int32 codes in order of first appearance; missing -> -1."""

  def __init__(self):
    self.codes: dict[str, int] = {}

  def encode(self, strings: pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(strings, null_encoding="encode")
    codes = self.codes
    lut = np.fromiter((-1 if v is None or v in MISSING else codes.setdefault(v, len(codes))
                       for v in enc.dictionary.to_pylist()), np.int32, len(enc.dictionary))  # a loop per value
    return lut[enc.indices.to_numpy(zero_copy_only=False)]  # [n]

  @property
  def values(self) -> list[str]:
    return list(self.codes)


def _parse_one(v: str) -> bool:
  """Whether one timestamp string parses (error path only)."""
  if re.match(_INT_RE, v):
    return -2**63 <= int(v) < 2**63
  if re.match(_FLOAT_RE, v):
    return math.isfinite(float(v))
  try:
    pc.cast(pa.array([v]), pa.timestamp("ns", "UTC" if re.search(_OFFSET_RE, v) else None))
    return True
  except pa.ArrowInvalid:
    return False


def _parse_time(arr: pa.Array, unit: str, path: str, row0: int, col: str) -> tuple[np.ndarray, np.ndarray]:
  """(int64 ns since the epoch (UTC) [n], missing bool [n]) of one batch's time column."""
  n, t = len(arr), arr.type
  if pa.types.is_dictionary(t):
    arr, t = arr.dictionary_decode(), t.value_type
  ns, missing = np.zeros(n, np.int64), arr.is_null().to_numpy(zero_copy_only=False)

  def numbers(mask, values):  # int or float numbers in `unit` -> ns
    v = np.asarray(values.to_numpy(zero_copy_only=False))
    if v.dtype.kind == "f":
      bad = np.isinf(v) | (np.isfinite(v) & (np.abs(v) >= 9.2e18 / TIME_UNITS[unit]))
      missing[np.flatnonzero(mask)[np.isnan(v)]] = True
      v = np.floor(np.where(np.isfinite(v) & ~bad, v, 0.0) * TIME_UNITS[unit])
    else:
      limit = (2**63 - 1) // TIME_UNITS[unit]
      bad = (v > limit) | (v < -limit)
    if bad.any():
      i = np.flatnonzero(mask)[np.argmax(bad)]
      value = arr[i].as_py()
      value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
      raise ValueError(f"{path}: row {row0 + i + 1}, column {col!r}: timestamp {value!r} is out of "
                       f"range for --time_unit={unit}")
    ns[mask] = (v * TIME_UNITS[unit]).astype(np.int64) if v.dtype.kind != "f" else v.astype(np.int64)

  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    ts = pc.cast(arr, pa.timestamp("ns", t.tz if pa.types.is_timestamp(t) else None))
    ns[~missing] = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)[~missing]
    return ns, missing
  if pa.types.is_integer(t) or pa.types.is_floating(t):
    ok = ~missing
    numbers(ok, arr.filter(pa.array(ok)))
    return ns, missing
  s = pc.utf8_trim_whitespace(_as_strings(arr, path, row0, col))
  missing |= pc.is_in(s, value_set=pa.array(MISSING)).to_numpy(zero_copy_only=False)
  is_int = pc.match_substring_regex(s, _INT_RE).to_numpy(zero_copy_only=False) & ~missing
  is_float = pc.match_substring_regex(s, _FLOAT_RE).to_numpy(zero_copy_only=False) & ~missing & ~is_int
  has_zone = pc.match_substring_regex(s, _OFFSET_RE).to_numpy(zero_copy_only=False)
  try:
    for mask, typ in ((is_int, pa.int64()), (is_float, pa.float64())):
      if mask.any():
        numbers(mask, pc.cast(s.filter(pa.array(mask)), typ))
    for zone in (False, True):
      mask = ~missing & ~is_int & ~is_float & (has_zone == zone)
      if mask.any():
        ts = pc.cast(s.filter(pa.array(mask)), pa.timestamp("ns", "UTC" if zone else None))
        ns[mask] = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)
  except pa.ArrowInvalid:
    for i in np.flatnonzero(~missing):  # error path only: find the first bad row
      v = s[i].as_py()
      if not _parse_one(v):
        raise ValueError(f"{path}: row {row0 + i + 1}, column {col!r}: cannot parse timestamp {v[:40]!r}; use "
                         "numbers in --time_unit or ISO-8601 (2024-05-01T12:00:00[Z])") from None
    raise
  return ns, missing


@dataclasses.dataclass
class _Events:
  """Every input event, encoded, in file order (rows without a user or a time already dropped).

  Attributes:
    user: int32 [n] user codes (users.values[code] is the id); time: int64 [n] ns since the epoch, UTC.
    values: {column: int32 [n]} value codes (-1 = missing); encoders[column].values[code] is the value.
    test_start: index of the first event read from --test_input (n when there is none).
  """
  user: np.ndarray
  time: np.ndarray
  values: dict[str, np.ndarray]
  users: _Encoder
  encoders: dict[str, _Encoder]
  test_start: int


def _read(options: PrepareOptions, stats: dict, log: Callable[[str], None]) -> _Events:
  users, encoders = _Encoder(), {c: _Encoder() for c in options.features}
  parts = {k: [] for k in ("user", "time", *options.features)}
  needed = [options.user_col, options.time_col, *options.features]
  dropped, missing_values = stats["rows_dropped"], stats["missing_values"]
  start, kept, test_start = time_lib.time(), 0, None
  for path in [*options.input, *options.test_input]:
    if path in options.test_input and test_start is None:
      test_start = kept
    rows = 0
    for batch in _batches(path, needed, options):
      u = users.encode(_as_strings(batch.column(options.user_col), path, rows, options.user_col))
      t, no_time = _parse_time(batch.column(options.time_col), options.time_unit, path, rows, options.time_col)
      keep = (u >= 0) & ~no_time
      dropped["missing_user"] += int((u < 0).sum())
      dropped["missing_time"] += int(((u >= 0) & no_time).sum())
      parts["user"].append(u[keep])
      parts["time"].append(t[keep])
      for c in options.features:
        codes = encoders[c].encode(_as_strings(batch.column(c), path, rows, c))[keep]
        missing_values[c] += int((codes < 0).sum())
        parts[c].append(codes)
      rows += batch.num_rows
      kept += int(keep.sum())
      stats["input_rows"] += batch.num_rows
      log(f"{path}: {rows:,} rows read ({stats['input_rows']:,} in all, {time_lib.time() - start:.1f}s)")
    if rows == 0:
      raise ValueError(f"{path}: no data rows (only a header?); give files with events")
  cat = {k: (np.concatenate(v) if v else np.zeros(0, np.int64 if k == "time" else np.int32)) for k, v in parts.items()}
  return _Events(user=cat.pop("user"), time=cat.pop("time"), values=cat, users=users, encoders=encoders,
                 test_start=kept if test_start is None else test_start)


# --------------------------------------------------------------------------------------------- cleaning, splits

def _stable_order(ev: _Events, rows: np.ndarray) -> np.ndarray:
  """`rows` sorted by (user, time), stable: ties keep file order."""
  rows = rows[np.argsort(ev.time[rows], kind="stable")]
  return rows[np.argsort(ev.user[rows], kind="stable")]


def _drop_duplicates(ev: _Events, order: np.ndarray) -> np.ndarray:
  """`order` without exact duplicates (same user, time and values), keeping the first in file order."""
  u, t = ev.user[order], ev.time[order]
  tie = np.zeros(len(order), bool)
  tie[1:] = (u[1:] == u[:-1]) & (t[1:] == t[:-1])  # same (user, time) as the previous row
  cand = np.flatnonzero(tie | np.append(tie[1:], False))  # rows in a run of equal (user, time)
  if cand.size == 0:
    return order
  run = np.cumsum(~tie)[cand]
  values = [ev.values[c][order[cand]] for c in ev.values]
  o = np.lexsort((cand, *values[::-1], run))  # by run, then values, then position (= file order)
  same = run[o][1:] == run[o][:-1]
  for v in values:
    same &= v[o][1:] == v[o][:-1]
  keep = np.ones(len(order), bool)
  keep[cand[o][1:][same]] = False
  return order[keep]


def _segments(user_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start [users], length [users]) of each user's run in user-sorted rows."""
  starts = np.flatnonzero(np.diff(user_sorted, prepend=-1) != 0) if len(user_sorted) else np.zeros(0, np.int64)
  return starts, np.diff(np.append(starts, len(user_sorted)))


# ---------------------------------------------------------------------------------------- vocabularies, derived

def _vocabulary(codes: np.ndarray, train: np.ndarray, values: list[str], *, min_count: int,
                max_size: int) -> tuple[np.ndarray, list[str]]:
  """(lut [len(values) + 1] code -> id (lut[-1] = missing -> OOV), the values of ids 2.. in id order)."""
  counts = np.bincount(codes[train & (codes >= 0)], minlength=len(values))
  cand = np.flatnonzero(counts >= max(min_count, 1))
  rank = np.empty(len(cand), np.int64)
  rank[pc.sort_indices(pa.array([values[i] for i in cand], pa.string())).to_numpy()] = np.arange(len(cand))
  top = cand[np.lexsort((rank, -counts[cand]))][:max_size]
  lut = np.full(len(values) + 1, features_lib.OOV_ID, np.int32)
  lut[top] = features_lib.NUM_RESERVED + np.arange(len(top))
  return lut, [values[i] for i in top]


def _derived(kind: str, t: np.ndarray, first: np.ndarray, gap_buckets: int) -> tuple[np.ndarray, dict, int]:
  """(bucket ids [n], vocabulary dict, vocab_size) of a derived time feature over user-sorted times."""
  if kind == "gap":
    gap_s = np.maximum(np.diff(t, prepend=t[:1]), 0) / 1e9
    b = np.where(first, 0, np.minimum(1 + np.floor(np.log2(1 + gap_s)), gap_buckets - 1)).astype(np.int32)
    vocab = {"kind": "derived", "derive": "gap", "buckets": gap_buckets, "unit": "seconds",
             "rule": "0 = first event; else 1 + floor(log2(1 + seconds since the previous event)), clipped to "
                     "buckets - 1; id = 2 + bucket"}
  elif kind == "hour":
    b, vocab = (t // _NS_HOUR) % 24, {"kind": "derived", "derive": "hour", "buckets": 24, "timezone": "UTC"}
  else:
    b, vocab = (t // _NS_DAY + 3) % 7, {"kind": "derived", "derive": "weekday", "buckets": 7, "timezone": "UTC",
                                         "rule": "0 = Monday"}  # 1970-01-01 was a Thursday
  return (features_lib.NUM_RESERVED + b).astype(np.int32), vocab, features_lib.NUM_RESERVED + vocab["buckets"]


# ------------------------------------------------------------------------------------------------------ labels

def _read_labels(paths: list[str], options: PrepareOptions, users: dict[str, int], stats: dict):
  """({label: {kind, ...}}, {label: float32 [num user codes]}) from CSVs whose first column is the user id."""
  import pyarrow.csv as pacsv
  raw: dict[str, dict[str, str]] = {}  # label -> {user: value}, in header order
  where: dict[tuple[str, str], str] = {}
  for path in paths:
    delimiter = _delimiter(path, options.delimiter)
    names, _ = _csv_header(path, delimiter)
    _check_columns(path, names, names[:1])
    try:
      table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                             convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}))
    except pa.ArrowInvalid as e:
      raise ValueError(_csv_parse_error(path, delimiter, len(names), e)) from None
    cols = [_as_strings(table.column(n).combine_chunks(), path, 0, n).to_pylist() for n in names]
    for name in names[1:]:
      raw.setdefault(name, {})
    for row, user in enumerate(cols[0], 1):  # a loop per user
      if user in (None, *MISSING):
        continue
      for name, col in zip(names[1:], cols[1:]):
        v = col[row - 1]
        if v in (None, *MISSING):
          continue
        old = raw[name].setdefault(user, v)
        if old != v:
          raise ValueError(f"{path}: row {row}, column {name!r}: user {user!r} already has {name}={old!r} "
                           f"(from {where[name, user]}); keep one label row per user")
        where.setdefault((name, user), f"{path} row {row}")
    stats["label_rows"] += len(cols[0])
  specs, arrays = {}, {}
  for name, values in raw.items():
    try:
      numeric = {u: float(v) for u, v in values.items()}
      specs[name] = {"kind": "numeric"}
    except ValueError:
      classes = sorted(set(values.values()))
      specs[name], index = {"kind": "categorical", "classes": classes}, {c: i for i, c in enumerate(classes)}
      numeric = {u: float(index[v]) for u, v in values.items()}
    arrays[name] = np.full(len(users), np.nan, np.float32)
    for u, v in numeric.items():
      if u in users:
        arrays[name][users[u]] = v
  label_users = set().union(*raw.values()) if raw else set()
  stats["label_users_without_events"] = len(label_users - set(users))
  return specs, arrays


# ----------------------------------------------------------------------------------------------------- prepare

def _validate(o: PrepareOptions) -> None:
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
  if o.delimiter and len(_delimiter("", o.delimiter)) != 1:
    raise ValueError(f"--delimiter={o.delimiter!r} must be one character (or \\t)")
  if o.min_events < 1 or o.gap_buckets < 2 or o.batch_rows < 1 or min(o.hash_buckets.values(), default=1) < 1:
    raise ValueError("--min_events and --batch_rows must be >= 1, --gap_buckets >= 2, --hash_buckets N >= 1")
  if os.path.exists(o.output) and not o.overwrite:
    raise ValueError(f"{os.path.abspath(o.output)} already exists; choose another --output or pass --overwrite")
  for path in [*o.input, *o.test_input, *o.labels]:  # before a long read: a typo in the last file fails now
    _check_file(path)


def _clean(ev: _Events, o: PrepareOptions, stats: dict) -> tuple[np.ndarray, np.ndarray]:
  """(kept rows sorted by user then time [events], in_test bool [user codes]): the drop rules of POLICY."""
  rows = np.arange(len(ev.user))
  in_test = np.zeros(len(ev.users.codes), bool)
  if o.test_input:
    in_test[ev.user[ev.test_start:]] = True
    bad = (rows < ev.test_start) & in_test[ev.user]
    stats["rows_dropped"]["test_user_in_input"] = int(bad.sum())
    rows = rows[~bad]
  order = _stable_order(ev, rows)
  order, n = _drop_duplicates(ev, order), len(order)
  stats["duplicate_rows"] = stats["rows_dropped"]["duplicate"] = n - len(order)
  _, lengths = _segments(ev.user[order])
  few = lengths < o.min_events
  stats["users_dropped_too_few_events"] = int(few.sum())
  stats["rows_dropped"]["too_few_events"] = int(lengths[few].sum())
  return order[np.repeat(~few, lengths)], in_test


def _encode(c: str, codes: np.ndarray, values: list[str], train: np.ndarray, o: PrepareOptions):
  """(ids int32 [events], schema feature dict) of feature column `c` from its value codes in event order."""
  if c in o.hash_buckets:
    buckets = int(o.hash_buckets[c])
    lut = np.fromiter((features_lib.NUM_RESERVED + stable_hash(v) % buckets for v in values), np.int32,
                      len(values))
    lut = np.append(lut, features_lib.OOV_ID).astype(np.int32)
    vocab, size = {"kind": "hash", "num_buckets": buckets, "hash": HASH}, features_lib.NUM_RESERVED + buckets
  else:
    min_count, max_size = _per_column(o.min_count, c, 1), _per_column(o.max_vocab, c, 1_000_000)
    lut, kept = _vocabulary(codes, train, values, min_count=min_count, max_size=max_size)
    if not kept:
      raise ValueError(f"feature {c!r}: no value occurs {min_count}+ times in the training events; lower "
                       "--min_count")
    vocab = {"kind": "values", "values": kept, "min_count": min_count, "max_size": max_size}
    size = features_lib.NUM_RESERVED + len(kept)
  loss = "sampled_softmax" if c in o.sampled else "softmax"
  return lut[codes], {"name": c, "vocab_size": size, "loss": loss, "vocabulary": vocab, "source": c}


def prepare(options: PrepareOptions, *, log: Callable[[str], None] = lambda line: None,
            extra_source: dict | None = None) -> dict:
  """Reads, cleans, splits and encodes the events; writes the data set; returns its schema.json dict.

  `log` receives progress lines; `extra_source` is merged into schema.json's `source` (e.g. by data builders).
  """
  o, start = options, time_lib.time()
  _validate(o)
  stats = {"input_rows": 0, "duplicate_rows": 0, "users_dropped_too_few_events": 0,
           "rows_dropped": dict.fromkeys(("missing_user", "missing_time", "test_user_in_input", "duplicate",
                                          "too_few_events"), 0),
           "missing_values": dict.fromkeys(o.features, 0), "oov_events": {}, "label_rows": 0}
  ev = _read(o, stats, log)
  order, in_test = _clean(ev, o, stats)
  starts, lengths = _segments(ev.user[order])  # [users]
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
  train = np.repeat(split == "train", lengths)  # [events]

  feats, ids = [], {}
  for c in o.features:
    ids[c], feature = _encode(c, ev.values.pop(c)[order], ev.encoders[c].values, train, o)
    stats["oov_events"][c] = int((ids[c][train] == features_lib.OOV_ID).sum())
    feats.append(feature)
  first = np.zeros(len(order), bool)
  first[starts] = True
  for kind in o.derive_time:
    name = DERIVED[kind]
    ids[name], vocab, size = _derived(kind, ev.time[order], first, o.gap_buckets)
    feats.append({"name": name, "vocab_size": size, "loss": "softmax", "vocabulary": vocab,
                  "source": f"derived:{kind}"})
  label_specs, label_values = _read_labels(o.labels, o, ev.users.codes, stats) if o.labels else ({}, {})

  def records(s: str):
    def generate():
      for k in np.flatnonzero(split == s):  # a loop per user
        a, b, u = starts[k], starts[k] + lengths[k], seg_user[k]
        record = {"user_id": names[u], **{f: ids[f][a:b] for f in ids}}
        if label_specs:
          record["labels"] = {name: float(v[u]) for name, v in label_values.items()}
        yield record
    return generate

  stats["users"] = {s: int((split == s).sum()) for s in store.SPLITS}
  stats["events"] = {s: int(lengths[split == s].sum()) for s in store.SPLITS}
  stats["policy"] = {**POLICY, "split": f"user_split(user_id, seed={o.split_seed}): blake2b-64 of "
                                        f"'{o.split_seed}:<user_id>' / 2**64 (see gpt_ads.data.prepare)"}
  source = {"inputs": [os.path.abspath(p) for p in o.input],
            "test_inputs": [os.path.abspath(p) for p in o.test_input],
            "labels": [os.path.abspath(p) for p in o.labels], "user_col": o.user_col, "time_col": o.time_col,
            "flags": dataclasses.asdict(o), **(extra_source or {})}
  out = os.path.abspath(o.output)
  log(f"writing {out} ...")
  meta = store.write(o.output, features=feats, splits={s: records(s) for s in store.SPLITS}, labels=label_specs,
                     stats=stats, source=source, overwrite=o.overwrite)
  dropped = ", ".join(f"{k}={v:,}" for k, v in stats["rows_dropped"].items() if v)
  log("; ".join(f"{s}: {stats['users'][s]:,} users / {stats['events'][s]:,} events" for s in store.SPLITS)
      + f"; rows dropped: {dropped or 'none'}; users dropped (too few events): "
      f"{stats['users_dropped_too_few_events']:,}; wrote {out} in {time_lib.time() - start:.1f}s")
  return meta


# --------------------------------------------------------------------------------------------------------- CLI

def _per_column_flag(flag: str, text: str) -> int | dict[str, int]:
  """"N" -> N; "COL:N,COL:N" -> {COL: N}; "N,COL:M" -> {"*": N, COL: M}."""
  if re.fullmatch(r"\s*\d+\s*", text):
    return int(text)
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    col, sep, n = part.rpartition(":")
    if not n.strip().isdigit():
      raise ValueError(f"--{flag}={text!r}: expected N or COL:N,COL:N (e.g. --{flag}=ad_id:500000)")
    out[col.strip() if sep else "*"] = int(n)
  return out


def _define_flags():
  from absl import flags
  d = flags
  d.DEFINE_list("input", None, "Events file(s), CSV or Parquet, comma-separated.")
  d.DEFINE_list("test_input", [], "Events of the test users (then --test_fraction is ignored).")
  d.DEFINE_string("user_col", None, "Column of the user id.")
  d.DEFINE_string("time_col", None, "Column of the event time (numbers in --time_unit, or ISO-8601).")
  d.DEFINE_list("features", None, "Columns that become categorical features, in schema order.")
  d.DEFINE_list("sampled", [], "Features trained with sampled_softmax (the others: softmax).")
  d.DEFINE_list("labels", [], "Per-user label CSV(s): first column the user id, the others labels.")
  d.DEFINE_list("derive_time", [], "Derived time features: any of gap,hour,weekday.")
  d.DEFINE_string("output", None, "Directory of the prepared data set (must not exist unless --overwrite).")
  d.DEFINE_enum("format", "auto", ["auto", "csv", "parquet"], "Input format; auto = by file extension.")
  d.DEFINE_string("delimiter", None, "CSV delimiter (default ',', tab for .tsv files; '\\t' = tab).")
  d.DEFINE_enum("time_unit", "s", list(TIME_UNITS), "Unit of numeric timestamps.")
  d.DEFINE_float("val_fraction", 0.05, "Fraction of users (by hash) in the validation split.")
  d.DEFINE_float("test_fraction", 0.05, "Fraction of users (by hash) in the test split.")
  d.DEFINE_integer("split_seed", 0, "Seed of the user -> split hash.")
  d.DEFINE_string("max_vocab", "1000000", "Vocabulary size cap: N, or COL:N,... (N,COL:M: N for the others).")
  d.DEFINE_string("min_count", "1", "Minimum training count to get an id: N, or COL:N,...")
  d.DEFINE_string("hash_buckets", "", "COL:N,...: hash these columns into N buckets instead of a vocabulary.")
  d.DEFINE_integer("min_events", 2, "Users with fewer events (after cleaning) are dropped.")
  d.DEFINE_integer("gap_buckets", 16, "Buckets of the derived time_gap feature.")
  d.DEFINE_bool("overwrite", False, "Replace an existing --output.")
  d.DEFINE_integer("batch_rows", 1_000_000, "Rows per read batch.")
  flags.mark_flags_as_required(["input", "user_col", "time_col", "features", "output"])


def main(argv):
  from absl import app, flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    hash_buckets = _per_column_flag("hash_buckets", f.hash_buckets) if f.hash_buckets else {}
    if not isinstance(hash_buckets, dict) or "*" in hash_buckets:
      raise ValueError(f"--hash_buckets={f.hash_buckets!r}: expected COL:N,COL:N")
    options = PrepareOptions(
        input=f.input, test_input=f.test_input, user_col=f.user_col, time_col=f.time_col, features=f.features,
        sampled=f.sampled, labels=f.labels, derive_time=f.derive_time, output=f.output, format=f.format,
        delimiter=f.delimiter, time_unit=f.time_unit, val_fraction=f.val_fraction, test_fraction=f.test_fraction,
        split_seed=f.split_seed, max_vocab=_per_column_flag("max_vocab", f.max_vocab),
        min_count=_per_column_flag("min_count", f.min_count), hash_buckets=hash_buckets,
        min_events=f.min_events, gap_buckets=f.gap_buckets, overwrite=f.overwrite, batch_rows=f.batch_rows)
  except ValueError as e:
    _error(e)
    sys.exit(2)
  status = execute(options)
  if status:
    sys.exit(status)


def _error(e: BaseException) -> None:
  print(f"gpt-ads-prepare: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)


def execute(options: PrepareOptions, *, log: Callable[[str], None] = lambda line: print(line, flush=True)) -> int:
  """What the command does after parsing its flags: `prepare`, with bad input as one line on stderr.

  -> exit status: 0 (the data set is written), 2 (rejected: one line "gpt-ads-prepare: error: ..." on stderr,
  nothing at --output). Any other exception is a bug and propagates.
  """
  try:
    prepare(options, log=log)
  except (ValueError, OSError, pa.ArrowException) as e:  # pa.ArrowInvalid is a ValueError
    _error(e)
    return 2
  return 0


def run():
  from absl import app
  _define_flags()
  main_module = sys.modules["__main__"]
  if not main_module.__doc__:  # the console-script shim: show this module's usage, policy and flags on --help
    main_module.__doc__ = __doc__
    from absl import flags
    for name in flags.FLAGS.get_key_flags_for_module(__name__):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], name)
  app.run(main)


if __name__ == "__main__":
  run()

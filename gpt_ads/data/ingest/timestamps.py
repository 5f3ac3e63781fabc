"""Time columns -> int64 nanoseconds since the epoch (UTC), and the features derived from each user's times.

Timestamps are numbers in --time_unit (a value of digits only is a number), ISO-8601 / "YYYY-MM-DD HH:MM:SS"
strings (no zone = UTC; "Z" / "+02:00" offsets honoured), or Parquet timestamp / date columns. An unparsable
non-empty timestamp (or inf, or one out of int64 nanoseconds) is a ValueError naming the file, row and column.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt_ads import features as features_lib
from gpt_ads.data.ingest.read import MISSING, as_strings

DERIVED = {"gap": "time_gap", "hour": "hour", "weekday": "weekday"}  # --derive_time kind -> feature name
TIME_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}  # nanoseconds per unit
_INT_RE, _FLOAT_RE = r"^[+-]?\d+$", r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_OFFSET_RE = r"(Z|z|[+-]\d\d:?\d\d)$"
_NS_HOUR, _NS_DAY = 3600 * 10**9, 86400 * 10**9


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


def parse_time(arr: pa.Array, unit: str, path: str, row0: int, col: str) -> tuple[np.ndarray, np.ndarray]:
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
  s = as_strings(arr, path, row0, col)
  if s.null_count == 0 and pc.all(pc.ascii_is_decimal(s)).as_py():  # the common case: unsigned integers only
    try:
      numbers(~missing, pc.cast(s, pa.int64()))
      return ns, missing
    except pa.ArrowInvalid:  # out of int64: the general path names the row
      pass
  s = pc.utf8_trim_whitespace(s)
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


def derived_feature(kind: str, t: np.ndarray, first: np.ndarray, gap_buckets: int) -> tuple[np.ndarray, dict, int]:
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

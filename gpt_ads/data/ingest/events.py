"""The read batches encoded into int arrays: user code, int64 time and one value code per feature, per event.

Files are streamed in batches, each batch encoded at once, so memory is O(events). Values are exact strings
("007" stays "007"); rows without a user id or a time are dropped here (counted in stats["rows_dropped"]).
"""

from __future__ import annotations

import dataclasses
import time as time_lib
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.read import MISSING, as_strings, batches, expand_inputs
from gpt_ads.data.ingest.timestamps import parse_time


class Encoder:
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


@dataclasses.dataclass
class Events:
  """Every input event, encoded, in file order (rows without a user or a time already dropped).

  Attributes:
    user: int32 [n] user codes (users.values[code] is the id); time: int64 [n] ns since the epoch, UTC.
    values: {column: int32 [n]} value codes (-1 = missing); encoders[column].values[code] is the value.
    test_start: index of the first event read from --test_input (n when there is none).
  """
  user: np.ndarray
  time: np.ndarray
  values: dict[str, np.ndarray]
  users: Encoder
  encoders: dict[str, Encoder]
  test_start: int


def read_events(options: PrepareOptions, stats: dict, log: Callable[[str], None]) -> Events:
  """Every event of --input then --test_input (their files: `expand_inputs`), in file order; counts rows and
  drops into `stats`."""
  users, encoders = Encoder(), {c: Encoder() for c in options.features}
  parts = {k: [] for k in ("user", "time", *options.features)}
  needed = [options.user_col, options.time_col, *options.features]
  dropped, missing_values = stats["rows_dropped"], stats["missing_values"]
  start, kept, test_start = time_lib.time(), 0, None
  inputs = expand_inputs(options.input, "--input")
  test_inputs = expand_inputs(options.test_input, "--test_input")
  for i, (path, partitions) in enumerate(inputs + test_inputs):
    if i == len(inputs):
      test_start = kept
    rows = 0
    for batch in batches(path, needed, options, partitions):
      u = users.encode(as_strings(batch.column(options.user_col), path, rows, options.user_col))
      t, no_time = parse_time(batch.column(options.time_col), options.time_unit, path, rows, options.time_col)
      keep = (u >= 0) & ~no_time
      dropped["missing_user"] += int((u < 0).sum())
      dropped["missing_time"] += int(((u >= 0) & no_time).sum())
      parts["user"].append(u[keep])
      parts["time"].append(t[keep])
      for c in options.features:
        codes = encoders[c].encode(as_strings(batch.column(c), path, rows, c))[keep]
        missing_values[c] += int((codes < 0).sum())
        parts[c].append(codes)
      rows += batch.num_rows
      kept += int(keep.sum())
      stats["input_rows"] += batch.num_rows
      log(f"{path}: {rows:,} rows read ({stats['input_rows']:,} in all, {time_lib.time() - start:.1f}s)")
    if rows == 0:
      raise ValueError(f"{path}: no data rows (only a header?); give files with events")
  cat = {k: (np.concatenate(v) if v else np.zeros(0, np.int64 if k == "time" else np.int32)) for k, v in parts.items()}
  return Events(user=cat.pop("user"), time=cat.pop("time"), values=cat, users=users, encoders=encoders,
                test_start=kept if test_start is None else test_start)

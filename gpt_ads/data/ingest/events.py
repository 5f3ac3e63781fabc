"""The read batches encoded into int arrays: user code, int64 time and one value code per feature, per event.

Files are streamed in batches, each batch encoded at once and handed to the external sort (`spill.Runs`), so
memory is O(distinct users and values) plus `PrepareOptions.spill_events` events. Values are exact strings
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
from gpt_ads.data.ingest.spill import Runs
from gpt_ads.data.ingest.timestamps import parse_time


class Encoder:
  """Maps the exact strings of one column to dense int32 codes in order of first appearance; missing -> -1.

  Vectorized: each batch's distinct values (pyarrow dictionary_encode, in order of first appearance) are looked
  up among the known ones with pc.index_in; the new ones get the next codes.
  """

  def __init__(self):
    self._known = pa.array([], pa.string())  # [codes] the values, in code order
    self._values: list[str] | None = []

  def __len__(self) -> int:
    return len(self._known)

  def encode(self, strings: pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(strings, null_encoding="encode")
    d = enc.dictionary  # the batch's distinct values, first appearance first (null among them)
    if d.type != pa.string():
      d = d.cast(pa.string())
    missing = pc.or_kleene(pc.is_null(d), pc.is_in(d, value_set=_MISSING)).to_numpy(zero_copy_only=False)
    lut = pc.index_in(d, value_set=self._known).to_numpy(zero_copy_only=False)  # NaN where new
    new = np.isnan(lut) & ~missing
    lut = np.where(np.isnan(lut) | missing, -1, lut).astype(np.int32)
    lut[new] = len(self._known) + np.arange(int(new.sum()), dtype=np.int32)
    if new.any():
      self._known = pa.concat_arrays([self._known, d.filter(pa.array(new))])
      self._values = None
    return lut[enc.indices.to_numpy(zero_copy_only=False)]  # [n]

  @property
  def values(self) -> list[str]:
    """[codes] the value of each code."""
    if self._values is None:
      self._values = self._known.to_pylist()
    return self._values

  def slice(self, lo: int, hi: int) -> list[str]:
    """The values of codes [lo, hi) (without building the list of every value)."""
    return self._known.slice(lo, max(min(hi, len(self._known)) - lo, 0)).to_pylist()

  @property
  def codes(self) -> dict[str, int]:
    """{value: code}."""
    return {v: i for i, v in enumerate(self.values)}


_MISSING = pa.array(MISSING, pa.string())


@dataclasses.dataclass
class Events:
  """Every input event, encoded and spilled (rows without a user or a time already dropped).

  Attributes:
    runs: the events, as sorted runs on disk (`spill.Runs`): user codes (users.values[code] is the id), int64
      ns since the epoch (UTC), {column: value codes (-1 = missing)}; encoders[column].values[code] is the value.
    in_test: bool [user codes] whether the user has a row in --test_input.
  """
  runs: Runs
  users: Encoder
  encoders: dict[str, Encoder]
  in_test: np.ndarray


def read_events(options: PrepareOptions, stats: dict, log: Callable[[str], None], runs: Runs) -> Events:
  """Every event of --input then --test_input (their files: `expand_inputs`), in file order, into `runs`;
  counts rows and drops into `stats`."""
  users, encoders = Encoder(), {c: Encoder() for c in options.features}
  needed = [options.user_col, options.time_col, *options.features]
  dropped, missing_values = stats["rows_dropped"], stats["missing_values"]
  start, in_test = time_lib.time(), np.zeros(0, bool)
  inputs = expand_inputs(options.input, "--input")
  test_inputs = expand_inputs(options.test_input, "--test_input")
  for i, (path, partitions) in enumerate(inputs + test_inputs):
    from_test = i >= len(inputs)
    rows = 0
    for batch in batches(path, needed, options, partitions):
      u = users.encode(as_strings(batch.column(options.user_col), path, rows, options.user_col))
      t, no_time = parse_time(batch.column(options.time_col), options.time_unit, path, rows, options.time_col)
      keep = (u >= 0) & ~no_time
      dropped["missing_user"] += int((u < 0).sum())
      dropped["missing_time"] += int(((u >= 0) & no_time).sum())
      values = {}
      for c in options.features:
        values[c] = encoders[c].encode(as_strings(batch.column(c), path, rows, c))[keep]
        missing_values[c] += int((values[c] < 0).sum())
      runs.add(u[keep], t[keep], values, from_test)
      if from_test:
        in_test = np.pad(in_test, (0, max(len(users) - len(in_test), 0)))
        in_test[u[keep]] = True
      rows += batch.num_rows
      stats["input_rows"] += batch.num_rows
      seconds = time_lib.time() - start
      log(f"{path}: {rows:,} rows read ({stats['input_rows']:,} in all, {seconds:.1f}s, "
          f"{stats['input_rows'] / max(seconds, 1e-9):,.0f} rows/s)")
    if rows == 0:
      raise ValueError(f"{path}: no data rows (only a header?); give files with events")
  runs.flush()
  in_test = np.pad(in_test, (0, len(users) - len(in_test)))
  return Events(runs=runs, users=users, encoders=encoders, in_test=in_test)

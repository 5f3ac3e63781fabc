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

from gpt_ads.data.ingest.codes import Encoder
from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.read import MISSING, as_strings, batches, expand_inputs
from gpt_ads.data.ingest.spill import Runs
from gpt_ads.data.ingest.timestamps import parse_time


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
  users, encoders = Encoder(MISSING), {c: Encoder(MISSING) for c in options.features}
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

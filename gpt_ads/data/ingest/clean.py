"""The bad-input policy (POLICY, written into schema.json's stats) and its drop rules over the encoded events.

Each user's events are sorted by time, stably (ties keep file order, files in the order given); exact
duplicate rows keep the first; users with fewer than --min_events events are dropped; with --test_input, the
--input rows of test users are dropped. The full policy, errors included, is gpt_ads.data.prepare's docstring.
"""

from __future__ import annotations

import numpy as np

from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.spill import Part

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


def clean(part: Part, in_test: np.ndarray, o: PrepareOptions, stats: dict) -> Part:
  """The events of `part` (a range of whole users, sorted by user then time, file order within ties) that the
  drop rules of POLICY keep; the drops are added to `stats`."""
  drops = stats["rows_dropped"]
  if o.test_input:
    part, n = _take(part, part.from_test | ~in_test[part.user])
    drops["test_user_in_input"] += n
  part, n = _take(part, ~_duplicates(part))
  stats["duplicate_rows"] += n
  drops["duplicate"] += n
  _, lengths = segments(part.user)
  few = lengths < o.min_events
  stats["users_dropped_too_few_events"] += int(few.sum())
  drops["too_few_events"] += int(lengths[few].sum())
  return _take(part, np.repeat(~few, lengths))[0]


def _take(part: Part, keep: np.ndarray) -> tuple[Part, int]:
  """(the rows of `part` where `keep`, the number of rows dropped)."""
  if keep.all():
    return part, 0
  return Part(user=part.user[keep], time=part.time[keep], values={c: v[keep] for c, v in part.values.items()},
              from_test=part.from_test[keep]), int(len(keep) - keep.sum())


def _duplicates(part: Part) -> np.ndarray:
  """bool [n]: rows that repeat an earlier row (same user, time and values) of `part`; the first is kept."""
  u, t = part.user, part.time
  tie = np.zeros(len(u), bool)
  tie[1:] = (u[1:] == u[:-1]) & (t[1:] == t[:-1])  # same (user, time) as the previous row
  cand = np.flatnonzero(tie | np.append(tie[1:], False))  # rows in a run of equal (user, time)
  dup = np.zeros(len(u), bool)
  if cand.size == 0:
    return dup
  run = np.cumsum(~tie)[cand]
  values = [v[cand] for v in part.values.values()]
  o = np.lexsort((cand, *values[::-1], run))  # by run, then values, then position (= file order)
  same = run[o][1:] == run[o][:-1]
  for v in values:
    same &= v[o][1:] == v[o][:-1]
  dup[cand[o][1:][same]] = True
  return dup


def segments(user_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start [users], length [users]) of each user's run in user-sorted rows."""
  starts = np.flatnonzero(np.diff(user_sorted, prepend=-1) != 0) if len(user_sorted) else np.zeros(0, np.int64)
  return starts, np.diff(np.append(starts, len(user_sorted)))

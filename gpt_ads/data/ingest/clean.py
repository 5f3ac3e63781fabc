"""The bad-input policy (POLICY, written into schema.json's stats) and its drop rules over the encoded events.

Each user's events are sorted by time, stably (ties keep file order, files in the order given); exact
duplicate rows keep the first; users with fewer than --min_events events are dropped; with --test_input, the
--input rows of test users are dropped. The full policy, errors included, is gpt_ads.data.prepare's docstring.
"""

from __future__ import annotations

import numpy as np

from gpt_ads.data.ingest.events import Events
from gpt_ads.data.ingest.options import PrepareOptions

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


def clean(ev: Events, o: PrepareOptions, stats: dict) -> tuple[np.ndarray, np.ndarray]:
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
  _, lengths = segments(ev.user[order])
  few = lengths < o.min_events
  stats["users_dropped_too_few_events"] = int(few.sum())
  stats["rows_dropped"]["too_few_events"] = int(lengths[few].sum())
  return order[np.repeat(~few, lengths)], in_test


def _stable_order(ev: Events, rows: np.ndarray) -> np.ndarray:
  """`rows` sorted by (user, time), stable: ties keep file order."""
  rows = rows[np.argsort(ev.time[rows], kind="stable")]
  return rows[np.argsort(ev.user[rows], kind="stable")]


def _drop_duplicates(ev: Events, order: np.ndarray) -> np.ndarray:
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


def segments(user_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start [users], length [users]) of each user's run in user-sorted rows."""
  starts = np.flatnonzero(np.diff(user_sorted, prepend=-1) != 0) if len(user_sorted) else np.zeros(0, np.int64)
  return starts, np.diff(np.append(starts, len(user_sorted)))

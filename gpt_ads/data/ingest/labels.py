"""Per-user labels (--labels): CSVs whose first column is the user id, one label per other column.

Numeric columns -> {kind: numeric}, others -> {kind: categorical, classes} (value = class index); users without
a row get NaN. Two different values of one label for one user are an error naming both rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.read import MISSING, as_strings, check_columns, csv_delimiter, csv_header, csv_parse_error


def read_labels(paths: list[str], options: PrepareOptions, users: dict[str, int], stats: dict):
  """({label: {kind, ...}}, {label: float32 [num user codes]}) from CSVs whose first column is the user id."""
  raw: dict[str, dict[str, str]] = {}  # label -> {user: value}, in header order
  where: dict[tuple[str, str], str] = {}
  for path in paths:
    delimiter = csv_delimiter(path, options.delimiter)
    names, _ = csv_header(path, delimiter)
    check_columns(path, names, names[:1])
    try:
      table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                             convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}))
    except pa.ArrowInvalid as e:
      raise ValueError(csv_parse_error(path, delimiter, len(names), e)) from None
    cols = [as_strings(table.column(n).combine_chunks(), path, 0, n).to_pylist() for n in names]
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
  return _label_arrays(raw, users, stats)


def _label_arrays(raw: dict[str, dict[str, str]], users: dict[str, int], stats: dict):
  """({label: {kind, ...}}, {label: float32 [num user codes]}) of the raw {label: {user: value}} strings."""
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

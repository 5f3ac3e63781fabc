"""Reading event / label files: which files (`expand_inputs`), format and delimiter, header and column checks,
record batches, exact strings.

A file that is missing, empty, without a header, with duplicate or missing columns, with a malformed CSV row or
that cannot be read to its end is a ValueError naming the file (and the row where one is known).

Inputs (`expand_inputs`): an --input / --test_input entry is a file, a directory (every event file under it,
recursively: CSV / TSV / TXT / Parquet by extension, compressed or not; names starting with "." or "_", such
as _SUCCESS, skipped) or a glob (`*`, `?`, `[...]`; directories among its matches expanded the same way), in
sorted path order. Hive-style partitions: a directory named `key=value` on a file's path gives its rows the
column `key` with that value (as a string) when the file has no such column, e.g. `events/date=2026-11-30/
part-0.parquet` -> column `date`.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gpt_ads.data.ingest.options import PrepareOptions

MISSING = ("", "NaN", "nan", "NAN")  # (and null) a missing value
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}  # by extension
_COMPRESSED = re.compile(r"\.(gz|bz2|zst|lz4)$")
# The CSV reader parses ahead of its consumer, tens of blocks deep: its memory grows with the block size
# (2.5 GB at 63 MB blocks, 0.16 GB at 4 MB), so blocks stay small and are gathered into batches of batch_rows.
CSV_BLOCK_BYTES = 4 << 20


def _extension(path: str) -> str:
  """The extension that names the format, under a compression suffix: "a.CSV.gz" -> ".csv"."""
  return os.path.splitext(_COMPRESSED.sub("", path.lower()))[1]


def expand_inputs(entries: list[str], flag: str) -> list[tuple[str, dict[str, str]]]:
  """The event files of --input / --test_input entries (module docstring), in order, each with the
  `key=value` partition values of its directories."""
  files = []
  for entry in entries:
    if glob.has_magic(entry):
      matches = sorted(glob.glob(entry, recursive=True))
      if not matches:
        raise ValueError(f"{flag} {entry!r}: the pattern matches no file; check the path")
    else:
      matches = [entry]
    for m in matches:
      if os.path.isdir(m):
        found = sorted(os.path.join(d, f) for d, _, names in os.walk(m) for f in names
                       if _extension(f) in FORMATS and not f.startswith((".", "_"))
                       and not any(part.startswith((".", "_")) for part in os.path.relpath(d, m).split(os.sep)
                                   if part != "."))
        if not found:
          raise ValueError(f"{m}: is a directory with no event files (.csv, .tsv, .txt, .parquet, .pq, "
                           f"compressed or not) under it; check {flag}")
        files += found
      else:
        files.append(m)
  return [(f, dict(part.split("=", 1) for part in os.path.dirname(f).split(os.sep) if "=" in part[1:]))
          for f in files]


def file_format(path: str, fmt: str) -> str:
  if fmt != "auto":
    return fmt
  ext = _extension(path)
  if ext in FORMATS:
    return FORMATS[ext]
  raise ValueError(f"{path}: cannot tell the format from the extension {ext!r}; pass --format=csv or parquet")


def csv_delimiter(path: str, delimiter: str | None) -> str:
  if not delimiter:
    return "\t" if re.search(r"\.tsv(\.\w+)?$", path.lower()) else ","
  return "\t" if delimiter in ("\\t", "tab") else delimiter


def check_file(path: str) -> None:
  if os.path.isdir(path):
    raise ValueError(f"{path}: is a directory; give the files in it (comma-separated) instead")
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file; check --input / --test_input / --labels")
  if os.path.getsize(path) == 0:
    raise ValueError(f"{path}: empty file; it needs a header line and data rows")


def check_columns(path: str, names: list[str], needed: list[str]) -> None:
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"{path}: the header names column(s) {twice} more than once; rename them")
  missing = [c for c in needed if c not in names]
  if missing:
    raise ValueError(f"{path}: no column(s) {missing} (it has {names}); check --user_col/--time_col/--features")


def csv_header(path: str, delimiter: str) -> tuple[list[str], float]:
  """The header's column names and the mean bytes per row of the first MiB (to size read blocks)."""
  check_file(path)
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


def csv_parse_error(path: str, delimiter: str, num_columns: int, err: Exception) -> str:
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


def batches(path: str, needed: list[str], options: PrepareOptions, partitions: dict[str, str] | None = None):
  """Yields record batches of the `needed` columns of one file (CSV columns as binary: exact bytes); a needed
  column the file lacks comes from `partitions` (its hive-style directories) when they have it.

  A file that cannot be read to its end (truncated compression, damaged Parquet pages, I/O errors) is a
  ValueError naming it."""
  try:
    yield from _file_batches(path, needed, options, partitions or {})
  except (OSError, pa.ArrowException) as e:  # our own errors are plain ValueErrors, not these
    raise ValueError(f"{path}: cannot be read to its end ({' '.join(str(e).split())[:200]}); is the file complete "
                     "(not truncated) and in the format its extension / --format says?") from None


def _combine(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
  if len(batches) == 1:
    return batches[0]
  return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _with_constants(batch: pa.RecordBatch, constants: dict[str, str]) -> pa.RecordBatch:
  if not constants:
    return batch
  extra = [pa.array([v.encode("utf-8")] * batch.num_rows, pa.binary()) for v in constants.values()]
  return pa.RecordBatch.from_arrays(batch.columns + extra, names=batch.schema.names + list(constants))


def _file_batches(path: str, needed: list[str], options: PrepareOptions, partitions: dict[str, str]):
  if file_format(path, options.format) == "parquet":
    check_file(path)
    try:
      pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
      raise ValueError(f"{path}: not a readable Parquet file ({e}); pass --format=csv if it is CSV") from None
    names = pf.schema_arrow.names
    constants = {c: partitions[c] for c in needed if c not in names and c in partitions}
    check_columns(path, names + list(constants), needed)
    for batch in pf.iter_batches(batch_size=options.batch_rows, columns=[c for c in needed if c not in constants]):
      yield _with_constants(batch, constants)
    return
  delimiter = csv_delimiter(path, options.delimiter)
  names, bytes_per_row = csv_header(path, delimiter)
  constants = {c: partitions[c] for c in needed if c not in names and c in partitions}
  check_columns(path, names + list(constants), needed)
  needed = [c for c in needed if c not in constants]
  try:
    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(block_size=int(min(max(options.batch_rows * bytes_per_row, 1 << 16),
                                                                 CSV_BLOCK_BYTES))),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(include_columns=needed,
                                             column_types={c: pa.binary() for c in needed}))
    pending, rows = [], 0
    for batch in reader:  # blocks of at most CSV_BLOCK_BYTES, gathered into batches of ~batch_rows rows
      pending.append(batch)
      rows += batch.num_rows
      if rows >= options.batch_rows:
        yield _with_constants(_combine(pending), constants)
        pending, rows = [], 0
    if pending:
      yield _with_constants(_combine(pending), constants)
  except pa.ArrowInvalid as e:
    raise ValueError(csv_parse_error(path, delimiter, len(names), e)) from None


def as_strings(arr: pa.Array, path: str, row0: int, col: str) -> pa.Array:
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

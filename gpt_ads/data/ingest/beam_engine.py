"""gpt-ads-prepare on Apache Beam (`--beam_pipeline_options`): reading, grouping by user, sorting and cleaning
as a Beam pipeline; the rest is the local engine's own code, so both write the same bytes.

The pipeline (`_pipeline`):
  read    each input file on one worker (`read.batches`, `timestamps.parse_time`: the local engine's parsing and
          its one-line errors); per batch, the rows of each user as one chunk, with each row's position in the
          inputs (file index << 40 | row) and whether it came from --test_input
  group   GroupByKey by user id: all of a user's rows in one place, whatever the runner or number of workers
  clean   per user: rows without a time dropped, a stable sort by (time, position) (= the local engine's
          order: ties keep file order), then `clean.clean`, the POLICY's drop rules, on that one user
  order   users keyed by block of the position of their first row (2^20 positions a block), one file per
          block, sorted inside: read back in name order they come in order of first appearance, the local
          engine's user order
  stats   the read and drop counts, summed over workers into one file

`cleaned_users` runs it and yields the users back block by block; gpt_ads.data.ingest.prepare feeds them, in
ranges of spill_events events, into the same splits, training value counts, vocabularies, record encoding and
shard files as the local engine. So the launching machine builds the vocabularies and writes the data set
(the local writer's ~2.5M events/s), while the runner's workers do the parsing, the shuffle by user and the
cleaning; the block files and the stats go to the pipeline's --temp_location when one is given (a bucket every
worker and the launcher can reach, on a cluster), else next to --output.

Errors raised by a worker (a malformed row, say) reach the launcher wrapped in the runner's own exception; the
worker marks the message (`_MARK`) so that the launcher re-raises exactly the local engine's one line; Beam's
own log lines go to a file in the scratch directory (`_quiet`). apache_beam is imported inside the functions
that use it: it is the optional [beam] extra, and this module is imported by every gpt-ads-prepare run.

Measured (benchmarks/ingest.py --events=5000000 --engines=local,beam, 2 cores, DirectRunner with 2 worker
processes): the same bytes as the local engine, at ~28K events/s against its ~450K: Python per user and per
chunk, and the DirectRunner's in-process shuffle. A runner with many workers is what it is for.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import re
import sys
import tempfile
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from gpt_ads.data.ingest.clean import clean
from gpt_ads.data.ingest.codes import Encoder, missing_mask
from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.read import MISSING, as_strings, batches, expand_inputs
from gpt_ads.data.ingest.spill import Part
from gpt_ads.data.ingest.timestamps import parse_time

INSTALL = "pip install -c constraints.txt -e '.[beam]'"
ROW_BITS = 40  # a row's position: input file index << ROW_BITS | row in the file
BLOCK_BITS = 20  # users are written in blocks of 2^BLOCK_BITS positions of their first row
_MARK = "\x1egpt_ads-error\x1e"
_MISSING_STRINGS = pa.array(MISSING, pa.string())


def pipeline_args(text: str) -> list[str]:
  """--beam_pipeline_options="--runner=X,--flag=v" -> ["--runner=X", "--flag=v"] (Beam's own flags)."""
  args = [a.strip() for a in text.split(",") if a.strip()]
  bad = [a for a in args if not a.startswith("--")]
  if bad:
    raise ValueError(f"--beam_pipeline_options={text!r}: {bad[0]!r} is not a Beam flag; give comma-separated "
                     "flags such as --runner=DirectRunner,--direct_num_workers=2")
  return args


def zero_stats(o: PrepareOptions) -> dict:
  """The read and drop counts this pipeline adds up (the keys of prepare's stats it fills)."""
  return {"input_rows": 0, "duplicate_rows": 0, "users_dropped_too_few_events": 0,
          "rows_dropped": dict.fromkeys(("missing_user", "missing_time", "test_user_in_input", "duplicate",
                                         "too_few_events"), 0),
          "missing_values": dict.fromkeys(o.features, 0)}


def add_stats(total: dict, more: dict) -> dict:
  """`total` += `more`, key by key (nested dicts too); returns `total`."""
  for k, v in more.items():
    if isinstance(v, dict):
      add_stats(total.setdefault(k, {}), v)
    else:
      total[k] = total.get(k, 0) + v
  return total


def _marked(items):
  """Yields from `items`; a ValueError leaves the worker with its message marked for the launcher."""
  try:
    yield from items
  except ValueError as e:
    raise ValueError(f"{_MARK}{e}{_MARK}") from None


def _read_file(item: tuple[int, str, dict, bool], o: PrepareOptions):
  """(input index, path, hive partitions, from --test_input) -> (user id, chunk) per user per batch; and the
  file's read counts, tagged "stats". A chunk: (positions int64, times int64, no time bool, [value strings per
  feature], from_test)."""
  import apache_beam as beam  # (the optional [beam] extra: see the module docstring)
  index, path, partitions, from_test = item
  stats, rows = zero_stats(o), 0
  for batch in batches(path, [o.user_col, o.time_col, *o.features], o, partitions):
    user_strings = as_strings(batch.column(o.user_col), path, rows, o.user_col)
    users = Encoder(MISSING).encode(user_strings)  # this batch's codes: which rows are one user's
    t, no_time = parse_time(batch.column(o.time_col), o.time_unit, path, rows, o.time_col)
    columns = [as_strings(batch.column(c), path, rows, c) for c in o.features]
    keep = (users >= 0) & ~no_time
    stats["rows_dropped"]["missing_user"] += int((users < 0).sum())
    stats["rows_dropped"]["missing_time"] += int(((users >= 0) & no_time).sum())
    for c, strings in zip(o.features, columns):
      stats["missing_values"][c] += int(missing_mask(strings, _MISSING_STRINGS)[keep].sum())
    with_user = np.flatnonzero(users >= 0)
    order = with_user[np.argsort(users[with_user], kind="stable")]  # by user, file order within
    take = pa.array(order)
    ids = user_strings.take(take).to_pylist()
    values = [strings.take(take).to_pylist() for strings in columns]
    position, t, no_time = (index << ROW_BITS) + rows + order, t[order], no_time[order]
    starts = np.flatnonzero(np.diff(users[order], prepend=-1) != 0).tolist() + [len(order)]
    for a, b in zip(starts[:-1], starts[1:]):
      yield ids[a], (position[a:b], t[a:b], no_time[a:b], [v[a:b] for v in values], from_test)
    rows += batch.num_rows
    stats["input_rows"] += batch.num_rows
  if rows == 0:
    raise ValueError(f"{path}: no data rows (only a header?); give files with events")
  yield beam.pvalue.TaggedOutput("stats", stats)


def _read(item, o: PrepareOptions):
  yield from _marked(_read_file(item, o))


def _clean_user(kv, o: PrepareOptions):
  """(user id, its chunks) -> (block, (first position, user id, in test, times [n], [value strings [n] per
  feature])) after the drop rules (n may be 0: the user keeps its code); and its drop counts, tagged."""
  import apache_beam as beam
  user, chunks = kv
  chunks = list(chunks)
  position = np.concatenate([c[0] for c in chunks])
  t = np.concatenate([c[1] for c in chunks])
  no_time = np.concatenate([c[2] for c in chunks])
  from_test = np.concatenate([np.full(len(c[0]), c[4]) for c in chunks])
  values = [list(itertools.chain.from_iterable(c[3][j] for c in chunks)) for j in range(len(o.features))]
  first = int(position.min())
  in_test = bool((from_test & ~no_time).any())
  rows = np.flatnonzero(~no_time)
  rows = rows[np.lexsort((position[rows], t[rows]))]  # by time, ties by position in the inputs
  stats, encoders = zero_stats(o), [Encoder(MISSING) for _ in o.features]
  part = Part(user=np.zeros(len(rows), np.int32), time=t[rows],
              values={c: enc.encode(pa.array([values[j][i] for i in rows.tolist()], pa.string()))
                      for j, (c, enc) in enumerate(zip(o.features, encoders))},
              from_test=from_test[rows])
  kept = clean(part, np.array([in_test]), o, stats)
  strings = [[enc.values[k] if k >= 0 else None for k in kept.values[c].tolist()]  # missing stays missing
             for c, enc in zip(o.features, encoders)]
  yield first >> BLOCK_BITS, (first, user, in_test, kept.time, strings)
  yield beam.pvalue.TaggedOutput("stats", stats)


def _write_block(kv, directory: str) -> None:
  from apache_beam.io.filesystems import FileSystems
  block, users = kv
  users = sorted(users, key=lambda u: u[0])
  with FileSystems.create(FileSystems.join(directory, f"block-{block:016x}.pkl")) as fh:
    fh.write(pickle.dumps(users, protocol=pickle.HIGHEST_PROTOCOL))


def _write_stats(stats: dict, directory: str) -> None:
  from apache_beam.io.filesystems import FileSystems
  with FileSystems.create(FileSystems.join(directory, "stats.pkl")) as fh:
    fh.write(pickle.dumps(stats))


def _pipeline(p, files: list[tuple[int, str, dict, bool]], o: PrepareOptions, directory: str) -> None:
  import apache_beam as beam
  read = (p | "files" >> beam.Create(files) | "spread" >> beam.Reshuffle()
          | "read" >> beam.FlatMap(_read, o).with_outputs("stats", main="chunks"))
  cleaned = (read.chunks | "by user" >> beam.GroupByKey()
             | "clean" >> beam.FlatMap(_clean_user, o).with_outputs("stats", main="users"))
  _ = (cleaned.users | "by block" >> beam.GroupByKey() | "write blocks" >> beam.Map(_write_block, directory))
  _ = ((read.stats, cleaned.stats) | "all stats" >> beam.Flatten()
       | "sum stats" >> beam.CombineGlobally(_sum, o)
       | "write stats" >> beam.Map(_write_stats, directory))


def _sum(stats, o: PrepareOptions) -> dict:
  """The sum of many stats dicts (associative: Beam combines partial sums)."""
  total = zero_stats(o)
  for s in stats:
    add_stats(total, s)
  return total


def _error_line(e: BaseException) -> str | None:
  """The marked one-line message inside a runner's exception, if a worker raised one."""
  found = re.search(re.escape(_MARK) + "(.*?)" + re.escape(_MARK), f"{e}\n{e!r}", re.S)
  return found.group(1) if found else None


@contextlib.contextmanager
def _quiet(log_path: str):
  """Beam's own log lines (the launcher's and its worker processes', which inherit file descriptor 2) go to
  `log_path`, so stderr keeps gpt-ads-prepare's one-line errors."""
  logging.disable(logging.WARNING)
  sys.stderr.flush()
  saved, target = os.dup(2), os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(target, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(target)
    logging.disable(logging.NOTSET)


def cleaned_users(o: PrepareOptions, stats: dict, log: Callable[[str], None], scratch: str) -> Iterator[list]:
  """Runs the pipeline; adds its counts to `stats`; yields the users block by block in order of first
  appearance: [(first position, user id, in test, times int64 [n], [value strings [n] per feature])]."""
  log_path = os.path.join(scratch, "beam.log")
  with _quiet(log_path):
    try:
      import apache_beam as beam
      from apache_beam.io.filesystems import FileSystems
      from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
    except ImportError:
      raise ValueError(f"--beam_pipeline_options needs Apache Beam, which is not installed: {INSTALL}") from None
  options = PipelineOptions(pipeline_args(o.beam_pipeline_options))
  temp = options.view_as(GoogleCloudOptions).temp_location
  directory = FileSystems.join(temp, f"gpt_ads_prepare_{os.getpid()}") if temp else tempfile.mkdtemp(
      prefix="beam-", dir=scratch)
  inputs = expand_inputs(o.input, "--input")
  files = [(i, path, partitions, i >= len(inputs))
           for i, (path, partitions) in enumerate(inputs + expand_inputs(o.test_input, "--test_input"))]
  log(f"Beam pipeline ({' '.join(pipeline_args(o.beam_pipeline_options))}) over {len(files)} file(s) ...")
  try:
    with _quiet(log_path), beam.Pipeline(options=options) as p:
      _pipeline(p, files, o, directory)
  except Exception as e:  # noqa: BLE001 - a worker's error arrives wrapped in the runner's exception
    line = _error_line(e)
    if line is not None:
      raise ValueError(line) from None
    raise
  try:
    with FileSystems.open(FileSystems.join(directory, "stats.pkl")) as fh:
      add_stats(stats, pickle.loads(fh.read()))
    blocks = sorted(m.path for m in FileSystems.match([FileSystems.join(directory, "block-*.pkl")])[0].metadata_list)
    for path in blocks:
      with FileSystems.open(path) as fh:
        yield pickle.loads(fh.read())
  finally:
    FileSystems.delete([directory])

"""The gpt-ads-prepare command: its flags, `main` (flags -> PrepareOptions) and `execute` (one-line errors).

The usage text (--help) and the bad-input policy are gpt_ads.data.prepare's docstring. Also
`python -m gpt_ads.cli.prepare`.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

import pyarrow as pa
from absl import app, flags

from gpt_ads.cli import errors
from gpt_ads.data import prepare as prepare_lib
from gpt_ads.data.ingest.timestamps import TIME_UNITS

_TOOL = "gpt-ads-prepare"


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
  d.DEFINE_integer("num_shards", 0, "ArrayRecord files per split, so that hosts read disjoint files (0 = from the "
                   "data size: files of 64 MiB to 1 GiB). Every split needs at least this many users.")
  d.DEFINE_string("vocab_from", "", "A prepared data set (e.g. yesterday's) whose vocabularies the --features "
                  "reuse, so a model trained on it can go on training on this one; values it does not know "
                  "become OOV (or its hash buckets). --max_vocab / --min_count do not apply to them.")
  d.DEFINE_string("beam_pipeline_options", "", "Run the reading, grouping by user and cleaning as an Apache Beam "
                  "pipeline with these comma-separated Beam flags, e.g. \"--runner=DirectRunner,"
                  "--direct_num_workers=2,--direct_running_mode=multi_processing\" (needs the [beam] extra); the "
                  "output is the same as without. Empty: the local engine.")
  flags.mark_flags_as_required(["input", "user_col", "time_col", "features", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    hash_buckets = _per_column_flag("hash_buckets", f.hash_buckets) if f.hash_buckets else {}
    if not isinstance(hash_buckets, dict) or "*" in hash_buckets:
      raise ValueError(f"--hash_buckets={f.hash_buckets!r}: expected COL:N,COL:N")
    options = prepare_lib.PrepareOptions(
        input=f.input, test_input=f.test_input, user_col=f.user_col, time_col=f.time_col, features=f.features,
        sampled=f.sampled, labels=f.labels, derive_time=f.derive_time, output=f.output, format=f.format,
        delimiter=f.delimiter, time_unit=f.time_unit, val_fraction=f.val_fraction, test_fraction=f.test_fraction,
        split_seed=f.split_seed, max_vocab=_per_column_flag("max_vocab", f.max_vocab),
        min_count=_per_column_flag("min_count", f.min_count), hash_buckets=hash_buckets,
        min_events=f.min_events, gap_buckets=f.gap_buckets, overwrite=f.overwrite, batch_rows=f.batch_rows,
        num_shards=f.num_shards, vocab_from=f.vocab_from, beam_pipeline_options=f.beam_pipeline_options)
  except ValueError as e:
    errors.fail(_TOOL, str(e))
  status = execute(options)
  if status:
    sys.exit(status)


def execute(options: prepare_lib.PrepareOptions, *, log: Callable[[str], None] = lambda line: print(line, flush=True)) -> int:
  """What the command does after parsing its flags: `prepare`, with bad input as one line on stderr.

  -> exit status: 0 (the data set is written), 2 (rejected: one line "gpt-ads-prepare: error: ..." on stderr,
  nothing at --output). Any other exception is a bug and propagates.
  """
  try:
    prepare_lib.prepare(options, log=log)
  except (ValueError, OSError, pa.ArrowException) as e:  # pa.ArrowInvalid is a ValueError
    errors.report(_TOOL, str(e))
    return 2
  return 0


def run() -> None:
  """The gpt-ads-prepare console script (setup.cfg): defines the flags and runs `main`; --help prints
  gpt_ads.data.prepare's docstring (the usage and the bad-input policy), then the flags."""
  _define_flags()
  sys.modules["__main__"].__doc__ = prepare_lib.__doc__
  # --help lists the main module's key flags: these are defined here, which is not the main module under the
  # console-script shim.
  for name in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], name)
  app.run(main)


if __name__ == "__main__":
  run()

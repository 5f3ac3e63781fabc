"""gpt-ads-prepare: raw event logs (CSV / Parquet) -> a prepared data set (gpt_ads.data.store).

  gpt-ads-prepare --input=FILE[,FILE...] [--test_input=FILE[,FILE...]] --user_col=NAME --time_col=NAME
      --features=COL,COL,... [--sampled=COL,...] [--labels=FILE[,FILE...]] [--derive_time=gap,hour,weekday]
      --output=DIR [--num_shards=N] [--vocab_from=DIR] [--beam_pipeline_options=--runner=...,--flag=...]

--input / --test_input entries are files, directories (every CSV / TSV / TXT / Parquet file under them,
recursively, in path order; names starting with "." or "_" skipped) or globs; a directory named key=value on a
file's path (hive-style partitions, e.g. date=2026-11-30/) gives its rows the column `key` when the file has
none (gpt_ads.data.ingest.read). --vocab_from=DIR reuses the vocabularies of the prepared data set DIR for the
--features (the same ids and sizes, so a model trained on DIR goes on training on this one): values DIR does not
know are OOV, or fall in DIR's hash buckets where it hashed the feature.

One input row is one event. Files are streamed in batches (pyarrow), each batch encoded at once into int arrays
(user code, int64 time, one value code per feature) and spilled to sorted runs in a temporary directory next to
--output (an external sort, gpt_ads.data.ingest.spill), so memory is bounded by PrepareOptions.spill_events
(2M events) plus the distinct user ids and values, not by the log. Values are exact strings
("007" stays "007"). Each user's events are sorted by time, stably (ties keep file order, files in the order
given). Records are written in order of each user's first appearance in the files.

--beam_pipeline_options runs the reading, the grouping by user and the cleaning as an Apache Beam pipeline
(DirectRunner here; Dataflow / Flink / Spark runners on a cluster) and writes the same bytes as without it
(gpt_ads.data.ingest.beam_engine; README "Preparing a large log on a cluster").

Splits: a user goes to test / validation / train by u = blake2b-64(f"{split_seed}:{user_id}") / 2**64:
u < test_fraction -> test, u < test_fraction + val_fraction -> validation, else train (`user_split`). With
--test_input the users of those files are the test split (their events come from those files only) and
u < val_fraction picks validation among the --input users.

Vocabularies come from TRAINING events only: the values seen >= min_count times, the max_vocab most frequent
(ties by value string), ids 2.. in decreasing frequency; anything else is OOV (1). --hash_buckets=COL:N
instead maps a value to 2 + (blake2b-64(value) mod N). --derive_time adds features computed from each user's
sorted times: time_gap (0 = first event, else 1 + floor(log2(1 + seconds since the previous event)), clipped
to gap_buckets - 1), hour (0-23, UTC) and weekday (0-6, Monday = 0); derived ids are 2 + bucket.

Output: one ArrayRecord file per split, or --num_shards=N files per split (TFDS spreads the users over them;
every split needs at least N users). When a split's files divide evenly among the training input shards
(config.data.num_shards, default one per process) each shard, so each host, reads only its own files.

Timestamps: numbers in --time_unit (a value of digits only is a number), ISO-8601 / "YYYY-MM-DD HH:MM:SS"
strings (no zone = UTC; "Z" / "+02:00" offsets honoured), or Parquet timestamp / date columns.

Bad input (errors are ONE line naming file, row (1-based data row, header excluded) and column; exit status 2;
nothing is written to --output on error; tests/data/fuzz_test.py runs 70+ malformed files against this policy):
  error   file missing, a directory, empty or without data rows; no header; a needed column missing; duplicate
          header names (used or not); a malformed CSV row (wrong field count, an unterminated quote, a file cut
          mid-row); a file that cannot be read to its end (truncated .gz, damaged Parquet); an unparsable non-empty
          timestamp (text, a repeated header row, inf, out of int64 nanoseconds); non-UTF-8 bytes in the header
          or a used column (UTF-16 files included); a Parquet column of another type than string / number
          (lists, structs, all-null); a feature with no value left; no events or an empty split after dropping.
  drop    rows whose user id or timestamp is empty / null / NaN (stats.rows_dropped.missing_user|missing_time);
          exact duplicate rows (same user, time and feature values): all but the first (stats.duplicate_rows);
          users with fewer than --min_events events after that (stats.users_dropped_too_few_events);
          --input rows of users that are in --test_input (stats.rows_dropped.test_user_in_input).
  map     empty / null / NaN feature values -> OOV (stats.missing_values per column).
  keep    unsorted rows (sorted per user); negative timestamps (times before 1970); ids of any size or sign, as
          exact strings; a UTF-8 BOM; \r\n or lone \r line endings; quoted values with newlines; bytes of
          any kind in columns that are not used.
Labels (--labels): CSVs whose first column is the user id; numeric columns -> {kind: numeric}, others ->
{kind: categorical, classes} (value = class index); users without a row get NaN.
"""

from __future__ import annotations

from gpt_ads.data.ingest.clean import POLICY
from gpt_ads.data.ingest.options import PrepareOptions
from gpt_ads.data.ingest.prepare import prepare, user_split
from gpt_ads.data.ingest.vocab import stable_hash

__all__ = ["POLICY", "PrepareOptions", "prepare", "stable_hash", "user_split"]

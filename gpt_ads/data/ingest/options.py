"""What gpt-ads-prepare is asked to do: `PrepareOptions`, the flags of the command as a dataclass."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PrepareOptions:
  """What `prepare` reads and how; mirrors the gpt-ads-prepare flags (lists instead of comma strings).

  Attributes:
    input, test_input, labels: input files (CSV / Parquet events; CSV labels).
    user_col, time_col, features: column names; `sampled` features get loss "sampled_softmax".
    output: the data set directory (must not exist unless `overwrite`).
    derive_time: any of "gap", "hour", "weekday".
    format: "auto" (by extension), "csv" or "parquet"; delimiter: None = "," ("\\t" for .tsv files).
    time_unit: unit of numeric timestamps ("s", "ms", "us", "ns").
    max_vocab, min_count: an int for every column, or {column: int} (key "*" = every other column).
    hash_buckets: {column: N}: hash those columns into N buckets instead of building a vocabulary.
    min_events: users with fewer events are dropped. gap_buckets: buckets of the derived time_gap.
    batch_rows: rows per read batch (CSV: approximately, via the block size).
    num_shards: ArrayRecord files per split (0 = from the data size; gpt_ads.data.writer.write).
    spill_events: events held in memory at once (a sorted run, a range of users: gpt_ads.data.ingest.spill);
      peak memory grows with it and with the distinct user ids and values (no flag: a setting of the library;
      2M measured fastest and smallest here: peak RSS 644 MB at 5M events, 800 MB at 50M; 8M: 974 MB at 5M).
    vocab_from: a prepared data set whose vocabularies the --features reuse ("" = build them from the training
      events); see gpt_ads.data.ingest.vocab.
    beam_pipeline_options: "" = the local engine; else Beam's own flags, comma-separated ("--runner=
      DirectRunner,--direct_num_workers=2"): read, group and clean on Apache Beam (gpt_ads.data.ingest.beam_engine),
      the same output. Not recorded in schema.json (how it ran, not what it is).
  """
  input: list[str]
  user_col: str
  time_col: str
  features: list[str]
  output: str
  test_input: list[str] = dataclasses.field(default_factory=list)
  sampled: list[str] = dataclasses.field(default_factory=list)
  labels: list[str] = dataclasses.field(default_factory=list)
  derive_time: list[str] = dataclasses.field(default_factory=list)
  format: str = "auto"
  delimiter: str | None = None
  time_unit: str = "s"
  val_fraction: float = 0.05
  test_fraction: float = 0.05
  split_seed: int = 0
  max_vocab: int | dict[str, int] = 1_000_000
  min_count: int | dict[str, int] = 1
  hash_buckets: dict[str, int] = dataclasses.field(default_factory=dict)
  min_events: int = 2
  gap_buckets: int = 16
  overwrite: bool = False
  batch_rows: int = 1_000_000
  num_shards: int = 0
  vocab_from: str = ""
  spill_events: int = 2_000_000
  beam_pipeline_options: str = ""

"""The implementation of gpt-ads-prepare; `gpt_ads.data.prepare` is its public entry (and holds the CLI doc),
gpt_ads/cli/prepare.py its flags.

One job per module, in pipeline order:
  options     PrepareOptions: what a run reads and how (the flags as a dataclass).
  read        files: format and delimiter, header / column checks, record batches, columns as exact strings.
  timestamps  time columns -> int64 ns (UTC); the features derived from sorted times (--derive_time).
  codes       exact strings -> dense codes across batches (a persistent hash table, checked exactly).
  events      the read batches encoded into int arrays (user code, time, one value code per feature).
  spill       the external sort: encoded events as sorted runs on disk, read back by range of users.
  clean       the drop rules of the bad-input POLICY: sort per user, duplicates, --min_events, test users.
  vocab       value codes -> ids: vocabularies from training events, hash buckets (stable_hash).
  labels      per-user label CSVs (--labels).
  prepare     the orchestration: validate the options, split users (user_split), encode, write the data set.
"""

"""The packed training stream: whole users, every user once per epoch, deterministic random access."""

import numpy as np

from gpt_ads.data import pipeline


def _source(n=300, max_len=16, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, max_len + 1, n)
  ids = np.arange(n)[:, None] * 100 + np.arange(max_len)[None] + 2  # user u, event i -> 100 u + i + 2
  feats = {"a": np.where(np.arange(max_len)[None] < lengths[:, None], ids, 0)}
  return pipeline.UsersSource(feats, lengths)


def _users_in(row):
  """{user: its events} recovered from a packed row, checking positions restart per segment."""
  out = {}
  for seg in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
    at = row["segment_ids"] == seg
    np.testing.assert_array_equal(row["positions"][at], np.arange(at.sum()))
    events = row["a"][at]
    out[int((events[0] - 2) // 100)] = events
  return out


def test_every_user_once_per_epoch_and_whole():
  src = _source()
  packed = pipeline.PackedRows(src, seed=3)
  seen = {}
  i = 0
  while len(seen) < len(src):
    for u, events in _users_in(packed[i]).items():
      assert u not in seen, "a user appeared twice within the first epoch"
      seen[u] = events
    i += 1
  for u, events in seen.items():
    np.testing.assert_array_equal(events, src[u]["a"][: src.lengths[u]])
  fill = np.mean([np.mean(packed[j]["segment_ids"] > 0) for j in range(i)])
  assert fill > 0.8  # packing removes most padding


def test_stream_is_a_pure_function_of_seed_and_index():
  a, b = pipeline.PackedRows(_source(), seed=1), pipeline.PackedRows(_source(), seed=1)
  for i in (700, 3, 250):  # random access in any order, across epochs
    for k in a[i]:
      np.testing.assert_array_equal(a[i][k], b[i][k])
  c = pipeline.PackedRows(_source(), seed=2)
  assert not np.array_equal(a[0]["a"], c[0]["a"])


def test_epochs_are_reshuffled():
  packed = pipeline.PackedRows(_source(), seed=0)
  packed[10_000]  # plans several epochs
  first = [sorted(_users_in(packed[i])) for i in range(3)]
  start = packed._starts[1]
  second = [sorted(_users_in(packed[start + i])) for i in range(3)]
  assert first != second


def test_batches_and_eval_cover_everyone():
  src = _source(n=70)
  ds = pipeline.train_dataset(src, global_batch=8, seed=0)
  batch = ds[5]
  assert batch["a"].shape == (8, 16) and batch["segment_ids"].dtype == np.int32
  rows = list(pipeline.eval_batches(src, global_batch=32))
  assert len(rows) == 3 and all(r["a"].shape == (32, 16) for r in rows)
  assert sum(pipeline.num_events(r) for r in rows) == int(src.lengths.sum())

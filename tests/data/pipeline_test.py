"""The Grain pipeline: whole users packed into rows, every user once per epoch, determinism, exact resume."""

import numpy as np
import pytest

from gpt_ads.data import pipeline

MAX_LEN = 16


class _Source:
  """n users; user u's event i has id 100 u + i + 2 (so every event names its user); lengths 1..40."""

  def __init__(self, n=300, seed=0):
    self.lengths = np.random.default_rng(seed).integers(1, 41, n)

  def __len__(self):
    return len(self.lengths)

  def __getitem__(self, u):
    ids = (100 * u + np.arange(self.lengths[u]) + 2).astype(np.int32)
    return {"a": ids, "b": ids % 7 + 2, "user_id": f"u{u}".encode()}


def _users_in(row):
  """[(user, its events)] recovered from a row, checking positions restart at 0 in every segment."""
  out = []
  for seg in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
    at = row["segment_ids"] == seg
    np.testing.assert_array_equal(row["positions"][at], np.arange(at.sum()))
    np.testing.assert_array_equal(row["b"][at], row["a"][at] % 7 + 2)  # features stay aligned
    events = row["a"][at]
    out.append((int((events[0] - 2) // 100), events))
  assert np.all(row["a"][row["segment_ids"] == 0] == 0)  # padding is PAD
  return out


def _stream(seed=0, pack=True, src=None, batch=8, num_shards=0):
  return pipeline.TrainIterator(src or _Source(), names=("a", "b"), max_len=MAX_LEN, global_batch=batch,
                                seed=seed, pack=pack, num_shards=num_shards)


@pytest.mark.parametrize("pack", [True, False])
def test_every_user_once_per_epoch_as_one_window(pack):
  src = _Source()
  it = _stream(seed=3, pack=pack, src=src)
  seen, fills = {}, []
  while len(seen) < len(src):
    batch = next(it)
    assert batch["a"].shape == (8, MAX_LEN) and batch["segment_ids"].dtype == np.int32
    fills.append(np.mean(batch["segment_ids"] > 0))
    for row in range(8):
      for u, events in _users_in({k: v[row] for k, v in batch.items()}):
        n = src.lengths[u]
        if u in seen:  # only possible once the next epoch has started
          assert len(seen) > 0.9 * len(src)
          continue
        # A window of at most MAX_LEN consecutive events of the user, never split across rows.
        assert len(events) == min(n, MAX_LEN)
        start = events[0] - 2 - 100 * u
        np.testing.assert_array_equal(events, 100 * u + 2 + start + np.arange(len(events)))
        seen[u] = events
  if pack:
    assert np.mean(fills) > 0.8  # packing removes most of the padding
  else:
    assert all(len(_users_in({k: v[r] for k, v in b.items()})) == 1 for b in [next(it)] for r in range(8))


def test_same_seed_same_batches_other_seed_other_batches():
  a, b, c = _stream(seed=1), _stream(seed=1), _stream(seed=2)
  for _ in range(5):
    x, y, z = next(a), next(b), next(c)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(x["a"], z["a"])


def test_epochs_are_reshuffled():
  src = _Source(n=40)
  it = _stream(seed=0, src=src, batch=2, pack=False)  # unpacked: the packer's bins blur epoch boundaries
  order = []
  while len(order) < 2 * len(src):
    batch = next(it)
    for row in range(2):
      order += [u for u, _ in _users_in({k: v[row] for k, v in batch.items()})]
  first, second = order[:len(src)], order[len(src):2 * len(src)]
  assert sorted(first) == list(range(len(src))) and first != second


def test_iterator_state_resumes_exactly():
  it = _stream(seed=5)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(6)]
  resumed = _stream(seed=5)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("pack", [True, False])
def test_eval_covers_everyone_once_with_the_last_window(pack):
  src = _Source(n=70)
  batches = list(pipeline.eval_batches(src, names=("a", "b"), max_len=MAX_LEN, global_batch=32, pack=pack))
  assert all(b["a"].shape == (32, MAX_LEN) for b in batches)
  filled = np.concatenate([(b["segment_ids"] > 0).any(axis=1) for b in batches])  # [rows]: holds a user
  num_rows = int(filled.sum())
  assert filled[:num_rows].all() and len(batches) == -(-num_rows // 32)  # empty rows only pad the last batch
  if pack:  # several users a row: fewer rows than users, never fewer than their events need
    assert -(-int(np.minimum(src.lengths, MAX_LEN).sum()) // MAX_LEN) <= num_rows < 70
  else:
    assert num_rows == 70
  users = [u for batch in batches for r in range(32) for u in _users_in({k: v[r] for k, v in batch.items()})]
  order = [u for u, _ in users]
  assert sorted(order) == list(range(70)) and (pack or order == list(range(70)))  # every user once
  for u, events in users:
    np.testing.assert_array_equal(events, src[u]["a"][-MAX_LEN:])
  assert sum(pipeline.num_events(r) for r in batches) == int(np.minimum(src.lengths, MAX_LEN).sum())


def test_input_shards_give_the_same_global_batches_and_states_on_any_process_layout():
  """Two shards read by one process = shard 0 and shard 1 read by two processes, concatenated."""
  both = _stream(seed=2, num_shards=2)
  assert both.shards == (0, 1)
  singles = [pipeline.shard_stream(_Source(), names=("a", "b"), max_len=MAX_LEN, rows=4, seed=2, shard=s,
                                   num_shards=2) for s in (0, 1)]
  singles = [iter(x) for x in singles]
  for _ in range(3):
    got, parts = next(both), [next(x) for x in singles]
    for k in got:
      np.testing.assert_array_equal(got[k], np.concatenate([parts[0][k], parts[1][k]]))
  state = both.get_state()
  assert state["num_shards"] == 2 and set(state["shards"]) == {"0", "1"}
  again = _stream(seed=2, num_shards=2)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["a"], next(both)["a"])
  with pytest.raises(ValueError, match="num_shards=2"):
    _stream(seed=2).set_state(state)
  with pytest.raises(ValueError, match="divide"):
    _stream(num_shards=3)


def test_multiprocess_prefetch_gives_the_same_batches():
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  a = _stream(seed=4)
  b = pipeline.TrainIterator(_Source(), names=("a", "b"), max_len=MAX_LEN, global_batch=8, seed=4, num_workers=1)
  for _ in range(3):
    x, y = next(a), next(b)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])

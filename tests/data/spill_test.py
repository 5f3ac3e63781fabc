"""The external sort: whatever the memory bound, the ranges give every event once, sorted by (user, time),
ties in file order, with user codes past the 2**16 blocks of one run."""

import numpy as np
import pytest

from gpt_ads.data.ingest import spill


def _log(seed, n=60_000, users=200_000):
  rng = np.random.default_rng(seed)
  user = rng.integers(0, users, n).astype(np.int32)
  time = rng.integers(0, 50, n).astype(np.int64) * 10**9  # many ties in time
  if seed % 2:
    time[::7] += 1  # a time of nanosecond resolution: the packed key no longer fits, np.lexsort does it
  return user, time, np.arange(n, dtype=np.int32)  # the value is the row's position in the file


@pytest.mark.parametrize("seed, spill_events, batch", [(0, 10**9, 60_000), (0, 5_000, 3_000), (1, 7_000, 2_500)])
def test_partitions_are_the_stable_sort_by_user_then_time(tmp_path, seed, spill_events, batch):
  user, time, row = _log(seed)
  runs = spill.Runs(str(tmp_path / "out"), ["row"], spill_events)
  for a in range(0, len(user), batch):
    runs.add(user[a:a + batch], time[a:a + batch], {"row": row[a:a + batch]}, from_test=a >= 45_000)
  parts = list(runs.partitions())
  runs.close()
  assert not list(tmp_path.iterdir())  # the spill directory is gone
  got = np.concatenate([p.values["row"] for _, p in parts])
  expected = np.lexsort((time, user))  # stable: ties in file order
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(np.concatenate([p.from_test for _, p in parts]), expected // batch * batch >= 45_000)
  sizes = [len(p.user) for _, p in parts]
  assert max(sizes) <= spill_events and (len(parts) > 1) == (spill_events < len(user))
  for (lo, hi), p in parts:
    assert lo <= p.user.min() and p.user.max() < hi


def test_user_time_order_packs_when_it_fits_and_falls_back_otherwise():
  rng = np.random.default_rng(3)
  user = rng.integers(10, 20, 1000).astype(np.int32)
  for time in (rng.integers(0, 5, 1000) * 1000, rng.integers(-2**62, 2**62, 1000)):
    np.testing.assert_array_equal(spill.user_time_order(user, time.astype(np.int64), 10, 20),
                                  np.lexsort((time, user)))


@pytest.mark.parametrize("time, dtype", [
    (np.array([1_704_067_200, 1_704_067_260, 1_704_153_600]) * 10**9, np.int32),  # ns, in steps of 60 s
    (np.array([-5, 3, 3, 7]), np.int32),  # before 1970, step 1
    (np.array([-2**62, 0, 2**62 - 1]), np.int64),  # a span past int32 steps
    (np.array([-2**63, 2**63 - 1]), np.int64),  # a span that overflows int64: kept as it is
])
def test_time_steps_are_exact(time, dtype):
  base, step, steps = spill.time_steps(time.astype(np.int64))
  assert [int(base) + int(s) * step for s in steps] == time.tolist()
  assert steps.dtype == dtype

"""Tests of gpt-ads-prepare: CSV / Parquet -> prepared data set, vocabularies, derived time, labels, bad input."""

import datetime
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_ads.data import prepare as prep
from gpt_ads.data import store
from gpt_ads.features import OOV_ID

HEADER = ("user", "ts", "ad", "device")


def write_csv(path, rows, header=HEADER, delimiter=","):
  with open(path, "w", encoding="utf-8") as fh:
    fh.write(delimiter.join(header) + "\n")
    fh.writelines(delimiter.join(map(str, r)) + "\n" for r in rows)
  return str(path)


def options(tmp_path, inputs, **kw):
  kw = {"user_col": "user", "time_col": "ts", "features": ["ad", "device"], "val_fraction": 0.25,
        "test_fraction": 0.25, "min_events": 1, **kw}
  return prep.PrepareOptions(input=list(inputs), output=str(tmp_path / "out"), **kw)


def decode(out_dir):
  """{split: {user_id: {feature: [raw value, or None for OOV]}}} read back through the vocabularies."""
  ds = store.open_dir(out_dir)
  vocab = {f["name"]: f["vocabulary"] for f in ds.meta["features"]}
  out = {}
  for split in store.SPLITS:
    src, users = ds.source(split), {}
    for i in range(len(src)):
      r = src[i]
      users[r["user_id"].decode()] = {
          name: [v["values"][j - 2] if v["kind"] == "values" and j != OOV_ID else
                 None if v["kind"] == "values" else int(j) for j in r[name]]
          for name, v in vocab.items()}
    out[split] = users
  return out


def random_events(seed=0, num_users=40):
  """Rows (user, ts, ad, device) in file order, with time ties and zero-padded ids, no duplicate rows."""
  rng = np.random.default_rng(seed)
  rows = set()
  while len(rows) < num_users * 6:
    rows.add((f"{rng.integers(num_users):03d}", int(1_700_000_000 + rng.integers(20)), f"ad{rng.integers(6)}",
              str(rng.choice(["phone", "desktop", "007"]))))
  rows = sorted(rows)
  rng.shuffle(rows)
  return rows


def expected_sequences(rows):
  """{user: [(ts, ad, device), ...]} sorted by time, stably (ties keep input order)."""
  seqs = {}
  for r in rows:
    seqs.setdefault(r[0], []).append(r[1:])
  return {u: sorted(s, key=lambda e: e[0]) for u, s in seqs.items()}


def check_round_trip(out_dir, rows, opts):
  got, expected = decode(out_dir), expected_sequences(rows)
  vocab = {f["name"]: set(f["vocabulary"]["values"]) for f in store.open_dir(out_dir).meta["features"]}
  assert sum(len(u) for u in got.values()) == len(expected)
  for user, events in expected.items():
    split = prep.user_split(user, seed=opts.split_seed, val_fraction=opts.val_fraction,
                            test_fraction=opts.test_fraction)
    record = got[split][user]
    for k, name in ((1, "ad"), (2, "device")):
      assert record[name] == [e[k] if e[k] in vocab[name] else None for e in events], (user, name)


def test_csv_round_trip_sorted_per_user_and_split_by_hash(tmp_path):
  rows = random_events()
  half = len(rows) // 2  # two files: ties across them keep the order of the files
  files = [write_csv(tmp_path / "a.csv", rows[:half]), write_csv(tmp_path / "b.csv", rows[half:])]
  opts = options(tmp_path, files, sampled=["ad"])
  meta = prep.prepare(opts)
  check_round_trip(opts.output, rows, opts)
  assert {f["name"]: f["loss"] for f in meta["features"]} == {"ad": "sampled_softmax", "device": "softmax"}
  assert meta["stats"]["input_rows"] == len(rows) and meta["splits"]["train"]["events"] > 0
  assert all(meta["splits"][s]["users"] > 0 for s in store.SPLITS)


def test_parquet_round_trip(tmp_path):
  rows = random_events(seed=1)
  cols = list(zip(*rows))
  table = pa.table({"user": list(cols[0]), "ts": pa.array(cols[1], pa.int64()), "ad": list(cols[2]),
                    "device": list(cols[3]), "unused": [1.5] * len(rows)})
  pq.write_table(table, tmp_path / "ev.parquet", row_group_size=50)
  opts = options(tmp_path, [str(tmp_path / "ev.parquet")], batch_rows=7)
  prep.prepare(opts)
  check_round_trip(opts.output, rows, opts)


def users_in(split, n, prefix="u"):
  """n user ids that `user_split` (seed 0, fractions 0.25) sends to `split`."""
  out, i = [], 0
  while len(out) < n:
    if prep.user_split(f"{prefix}{i}", val_fraction=0.25, test_fraction=0.25) == split:
      out.append(f"{prefix}{i}")
    i += 1
  return out


def test_vocabulary_from_train_only_by_decreasing_count(tmp_path):
  train, val, test = users_in("train", 4), users_in("validation", 1), users_in("test", 1)
  rows, t = [], 0
  for ad, n in (("b", 3), ("a", 3), ("c", 5), ("d", 1)):  # train counts c:5 > a:3 = b:3 > d:1
    for i in range(n):
      t += 1
      rows.append((train[i % 4], t, ad, "x"))
  rows += [(val[0], 1, "c", "x"), (val[0], 2, "e", "x"), (test[0], 1, "only_test", "x"), (test[0], 2, "d", "x")]
  files = [write_csv(tmp_path / "ev.csv", rows)]
  meta = prep.prepare(options(tmp_path, files))
  ad = meta["features"][0]
  assert ad["vocabulary"]["values"] == ["c", "a", "b", "d"] and ad["vocab_size"] == 6
  assert ad["counts"] == [0, 0, 5, 3, 3, 1]
  got = decode(tmp_path / "out")
  assert got["test"][test[0]]["ad"] == [None, "d"] and got["validation"][val[0]]["ad"] == ["c", None]

  meta = prep.prepare(options(tmp_path, files, overwrite=True, min_count={"ad": 2}, max_vocab={"ad": 2}))
  assert meta["features"][0]["vocabulary"]["values"] == ["c", "a"]
  assert meta["stats"]["oov_events"]["ad"] == 4  # b x3, d x1 in train

  meta = prep.prepare(options(tmp_path, files, overwrite=True, hash_buckets={"ad": 7}))
  ad = meta["features"][0]
  assert ad["vocab_size"] == 9 and ad["vocabulary"]["kind"] == "hash"
  assert decode(tmp_path / "out")["test"][test[0]]["ad"] == [2 + prep.stable_hash(v) % 7 for v in ("only_test", "d")]


def test_derived_time_features(tmp_path):
  monday = datetime.datetime(2024, 5, 6, 23, 59, 59, tzinfo=datetime.timezone.utc)
  tuesday = int((monday + datetime.timedelta(seconds=1)).timestamp())
  times = ["2024-05-06T23:59:59Z",
           "2024-05-06 23:59:59",  # the same instant (no zone = UTC): gap 0
           tuesday,  # +1 s, as epoch seconds
           "2024-05-07T02:00:03+02:00",  # +3 s
           " 2024-05-08T00:00:03 "]  # +1 day
  users = users_in("train", 1) + users_in("validation", 1) + users_in("test", 1)
  rows = [(u, t, ad, "x") for u in users for t, ad in zip(times, "abcde")]
  meta = prep.prepare(options(tmp_path, [write_csv(tmp_path / "ev.csv", rows)],
                              derive_time=["gap", "hour", "weekday"]))
  derived = {f["name"]: f for f in meta["features"][2:]}
  assert {n: (f["vocab_size"], f["source"]) for n, f in derived.items()} == {
      "time_gap": (18, "derived:gap"), "hour": (26, "derived:hour"), "weekday": (9, "derived:weekday")}
  got = decode(tmp_path / "out")
  for split, user in zip(store.SPLITS, users):
    record = got[split][user]
    assert record["ad"] == list("abcde")
    assert [j - 2 for j in record["time_gap"]] == [0, 1, 2, 3, 15]  # 1 + floor(log2(1 + 86400)) = 17 -> 15
    assert [j - 2 for j in record["hour"]] == [23, 23, 0, 0, 0]
    assert [j - 2 for j in record["weekday"]] == [0, 0, 1, 1, 2]


def test_time_unit_milliseconds(tmp_path):
  rows = [(u, t, "a", "x") for u in users_in("train", 1) + users_in("validation", 1) + users_in("test", 1)
          for t in (1_715_039_999_000, 1_715_040_000_500)]  # 23:59:59.000 and 00:00:00.500: a 1.5 s gap
  prep.prepare(options(tmp_path, [write_csv(tmp_path / "ev.csv", rows)], time_unit="ms",
                       derive_time=["gap", "hour"]))
  got = decode(tmp_path / "out")
  for split in store.SPLITS:
    (record,) = got[split].values()
    assert [j - 2 for j in record["time_gap"]] == [0, 2] and [j - 2 for j in record["hour"]] == [23, 0]


def test_labels_joined_numeric_and_categorical(tmp_path):
  users = users_in("train", 2) + users_in("validation", 1) + users_in("test", 1)
  rows = [(u, t, "a", "x") for u in users for t in (1, 2)]
  labels = write_csv(tmp_path / "labels.csv", [(users[0], 30, "engineer"), (users[1], 41.5, "artist"),
                                               (users[2], "", "artist"), ("nobody", 3, "cook")],
                     header=("uid", "age", "job"))
  meta = prep.prepare(options(tmp_path, [write_csv(tmp_path / "ev.csv", rows)], labels=[labels]))
  assert meta["labels"] == {"age": {"kind": "numeric"},
                            "job": {"kind": "categorical", "classes": ["artist", "cook", "engineer"]}}
  ds = store.open_dir(tmp_path / "out")
  got = {}
  for split in store.SPLITS:
    src = ds.source(split)
    got.update({src[i]["user_id"].decode(): src[i]["labels"] for i in range(len(src))})
  assert (got[users[0]]["age"], got[users[0]]["job"]) == (30, 2)
  assert (got[users[1]]["age"], got[users[1]]["job"]) == (41.5, 0)
  assert np.isnan(got[users[2]]["age"]) and got[users[2]]["job"] == 0
  assert np.isnan(got[users[3]]["age"]) and np.isnan(got[users[3]]["job"])
  assert meta["stats"]["label_users_without_events"] == 1


def test_test_input_users_form_the_test_split(tmp_path):
  rows = [(f"in{i}", t, "a" if t < 3 else "b", "x") for i in range(12) for t in (1, 2, 3)]
  test_rows = [("t1", 5, "z", "x"), ("t1", 6, "a", "x"), ("t2", 1, "a", "x"), ("t2", 2, "a", "x")]
  rows.append(("t1", 9, "a", "x"))  # a test user in --input: dropped
  files = [write_csv(tmp_path / "ev.csv", rows)]
  opts = options(tmp_path, files, test_input=[write_csv(tmp_path / "test.csv", test_rows)], val_fraction=0.3)
  meta = prep.prepare(opts)
  got = decode(opts.output)
  assert got["test"] == {"t1": {"ad": [None, "a"], "device": ["x", "x"]}, "t2": {"ad": ["a", "a"], "device": ["x"] * 2}}
  assert set(got["train"]) | set(got["validation"]) == {f"in{i}" for i in range(12)}
  assert all(prep.user_split(u, val_fraction=0.3, test_fraction=0.0) == "validation" for u in got["validation"])
  assert meta["stats"]["rows_dropped"]["test_user_in_input"] == 1
  assert "z" not in meta["features"][0]["vocabulary"]["values"]


def test_policy_counts(tmp_path):
  users = users_in("train", 2) + users_in("validation", 1) + users_in("test", 1)
  rows = [(u, t, "a", "x") for u in users for t in (1, 2)]
  rows += [("", 3, "a", "x"), (users[0], "", "a", "x"), (users[0], "NaN", "a", "x"),  # dropped rows
           (users[0], 1, "a", "x"), (users[0], 1, "a", "x"),  # two exact duplicates of a row
           (users[1], 4, "", "x"), (users[1], 5, "NaN", ""),  # missing feature values -> OOV
           ("lonely", 7, "a", "x")]  # one event: dropped with --min_events=2
  opts = options(tmp_path, [write_csv(tmp_path / "ev.csv", rows)], min_events=2)
  stats = prep.prepare(opts)["stats"]
  assert stats["rows_dropped"] == {"missing_user": 1, "missing_time": 2, "test_user_in_input": 0, "duplicate": 2,
                                   "too_few_events": 1}
  assert stats["duplicate_rows"] == 2 and stats["users_dropped_too_few_events"] == 1
  assert stats["missing_values"] == {"ad": 2, "device": 1}
  assert decode(opts.output)["train"][users[1]]["ad"] == ["a", "a", None, None]
  assert set(stats["policy"]) >= {"duplicates", "min_events", "missing_feature", "missing_user_or_time"}


def run_cli(tmp_path, *args):
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "gpt_ads.cli.prepare", "--user_col=user", "--time_col=ts",
                         "--features=ad,device", f"--output={out}", *args], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  return proc, out


GOOD = [("u1", 1, "a", "x"), ("u1", 2, "b", "y")]


@pytest.mark.parametrize("case,expect", [
    ("missing_column", ["ev.csv", "no column(s) ['device']"]),
    ("no_file", ["nope.csv", "no such file"]),
    ("empty_file", ["ev.csv", "empty file"]),
    ("header_only", ["ev.csv", "no data rows"]),
    ("bad_time", ["ev.csv", "row 2, column 'ts'", "'yesterday'"]),
    ("non_utf8", ["ev.csv", "row 2, column 'ad'", "not UTF-8"]),
    ("duplicate_header", ["ev.csv", "['ad']", "more than once"]),
    ("malformed_row", ["ev.csv", "row 2 (line 3)", "2 fields"]),
    ("output_exists", ["already exists", "--overwrite"]),
])
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, case, expect):
  path = tmp_path / "ev.csv"
  if case == "missing_column":
    write_csv(path, [r[:3] for r in GOOD], header=HEADER[:3])
  elif case == "no_file":
    path = tmp_path / "nope.csv"
  elif case == "empty_file":
    path.write_bytes(b"")
  elif case == "header_only":
    write_csv(path, [])
  elif case == "bad_time":
    write_csv(path, GOOD[:1] + [("u1", "yesterday", "a", "x")] + GOOD[1:])
  elif case == "non_utf8":
    path.write_bytes(b"user,ts,ad,device\nu1,1,a,x\nu1,2,caf\xe9,x\n")
  elif case == "duplicate_header":
    write_csv(path, [r + ("c",) for r in GOOD], header=HEADER + ("ad",))
  elif case == "malformed_row":
    path.write_bytes(b"user,ts,ad,device\nu1,1,a,x\nu1,2\n")
  elif case == "output_exists":
    write_csv(path, GOOD)
    (tmp_path / "out").mkdir()
  proc, out = run_cli(tmp_path, f"--input={path}")
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("gpt-ads-prepare: error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  for text in expect:
    assert text in lines[0], lines[0]
  assert out.exists() == (case == "output_exists")
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temporary directory left


def test_error_row_counts_across_batches(tmp_path):
  rows = [(f"u{i // 3}", i, "a", "x") for i in range(6000)]
  rows[4321] = ("u9", "2024-13-45", "a", "x")
  with pytest.raises(ValueError, match=r"ev.csv: row 4322, column 'ts': cannot parse timestamp '2024-13-45'"):
    prep.prepare(options(tmp_path, [write_csv(tmp_path / "ev.csv", rows)], batch_rows=500))
  table = pa.table({k: [str(r[i]) for r in rows] for i, k in enumerate(HEADER)})
  pq.write_table(table, tmp_path / "ev.parquet")
  with pytest.raises(ValueError, match=r"ev.parquet: row 4322, column 'ts'"):
    prep.prepare(options(tmp_path, [str(tmp_path / "ev.parquet")], batch_rows=500))
  assert not (tmp_path / "out").exists()


def test_cli_writes_schema(tmp_path):
  rows = [(u, t, "a" if t % 2 else "b", "x") for u in users_in("train", 2) + users_in("validation", 1)
          + users_in("test", 1) for t in (1, 2, 3)]
  proc, out = run_cli(tmp_path, f"--input={write_csv(tmp_path / 'ev.tsv', rows, delimiter=chr(9))}",
                      "--val_fraction=0.25", "--test_fraction=0.25", "--sampled=ad", "--derive_time=gap",
                      "--max_vocab=ad:1", "--min_count=1")
  assert proc.returncode == 0, proc.stderr
  assert "wrote" in proc.stdout.splitlines()[-1]
  meta = json.load(open(out / "schema.json"))
  assert [f["name"] for f in meta["features"]] == ["ad", "device", "time_gap"]
  assert meta["features"][0]["vocabulary"]["values"] == ["a"] and meta["features"][0]["loss"] == "sampled_softmax"


def _records(out_dir):
  """{split: {user_id: {feature: ids}}} of a prepared data set."""
  ds = store.open_dir(out_dir)
  return {s: {r["user_id"]: {f: list(r[f]) for f in ds.feature_names}
              for r in (ds.source(s)[i] for i in range(len(ds.source(s))))} for s in store.SPLITS}


def test_directories_globs_and_hive_partitions_read_like_the_files_in_path_order(tmp_path):
  """A directory of hive-style partitions (date=.../, CSV and Parquet; _SUCCESS and hidden files skipped) and a
  glob give the same data set as the same files listed one by one; the date=... directories give the rows a
  `date` column that can be a feature."""
  rows = random_events(seed=3)
  third = len(rows) // 3
  parts = tmp_path / "events"
  day1, day2 = parts / "date=2026-11-29", parts / "date=2026-11-30"
  day1.mkdir(parents=True)
  day2.mkdir()
  files = [write_csv(day1 / "part-0.csv", rows[:third]), write_csv(day1 / "part-1.csv", rows[third:2 * third])]
  cols = list(zip(*rows[2 * third:]))
  pq.write_table(pa.table({"user": list(cols[0]), "ts": pa.array(cols[1], pa.int64()), "ad": list(cols[2]),
                           "device": list(cols[3])}), day2 / "part-0.parquet")
  files.append(str(day2 / "part-0.parquet"))
  (parts / "_SUCCESS").write_text("")
  (day2 / ".part-0.parquet.crc").write_text("x")
  by_files = options(tmp_path, files)
  prep.prepare(by_files)
  expected = _records(by_files.output)
  for entry in (str(parts), str(parts / "date=*" / "part-*")):
    opts = options(tmp_path, [entry], overwrite=True)
    prep.prepare(opts)
    assert _records(opts.output) == expected, entry
  with_date = options(tmp_path, [str(parts)], features=["ad", "device", "date"], overwrite=True)
  meta = prep.prepare(with_date)
  date = next(f for f in meta["features"] if f["name"] == "date")
  assert sorted(date["vocabulary"]["values"]) == ["2026-11-29", "2026-11-30"]
  with pytest.raises(ValueError, match="matches no file"):
    prep.prepare(options(tmp_path, [str(tmp_path / "nothing-*.csv")], overwrite=True))


def test_vocab_from_reuses_yesterdays_ids_and_unseen_values_are_oov(tmp_path):
  """Today's log prepared with --vocab_from=yesterday: the same ids and vocab sizes (values and hash buckets)
  for what yesterday knew, OOV for the values it did not; a feature yesterday lacks is a one-line error."""
  yesterday = [(f"u{i % 12}", i, f"ad{i % 5}", ["phone", "desktop"][i % 2]) for i in range(96)]
  today = [(f"v{i % 12}", i, f"ad{i % 7}", ["phone", "tablet"][i % 2]) for i in range(96)]
  old = options(tmp_path / "y", [write_csv(tmp_path / "y.csv", yesterday)], hash_buckets={"device": 8})
  (tmp_path / "y").mkdir()
  old_meta = prep.prepare(old)
  new = options(tmp_path, [write_csv(tmp_path / "t.csv", today)], vocab_from=old.output)
  new_meta = prep.prepare(new)
  before = {f["name"]: f for f in old_meta["features"]}
  for f in new_meta["features"]:
    assert f["vocab_size"] == before[f["name"]]["vocab_size"]
    assert {k: v for k, v in f["vocabulary"].items() if k != "from"} == before[f["name"]]["vocabulary"]
  known = before["ad"]["vocabulary"]["values"]
  for user, events in decode(new.output)["train"].items():
    ads = [e[2] for e in sorted((r for r in today if r[0] == user), key=lambda r: r[1])]
    assert events["ad"] == [a if a in known else None for a in ads]  # ad5, ad6: unseen yesterday -> OOV
  assert any(None in u["ad"] for s in decode(new.output).values() for u in s.values())
  with pytest.raises(ValueError, match="has no feature 'campaign'"):
    prep.prepare(options(tmp_path, [str(tmp_path / "t.csv")], features=["ad", "campaign"],
                         vocab_from=old.output, overwrite=True))
  with pytest.raises(ValueError, match="disagrees with --vocab_from"):
    prep.prepare(options(tmp_path, [str(tmp_path / "t.csv")], hash_buckets={"device": 4}, vocab_from=old.output,
                         overwrite=True))


def test_the_external_sort_writes_the_same_bytes_whatever_its_memory_bound(tmp_path):
  """Many runs and many ranges of users (spill_events=7) give the files of one run in one range: same order
  of users, same ties, duplicates, test users and vocabularies."""
  rows = random_events(3, num_users=60)
  rows += rows[5:9] + [("t1", 1_700_000_003, "ad1", "phone")]  # exact duplicates (dropped) and a test user
  test_rows = [("t1", 1_700_000_001, "ad2", "007"), ("t1", 1_700_000_000, "ad2", "007"),
               ("t2", 1_700_000_002, "ad0", "phone"),
               ("t2", 1_700_000_002, "ad9", "phone")]
  inputs = [write_csv(tmp_path / "a.csv", rows[:200]), write_csv(tmp_path / "b.csv", rows[200:])]
  test = [write_csv(tmp_path / "t.csv", test_rows)]

  def files(spill_events, name):
    opts = options(tmp_path / name, inputs, test_input=test, derive_time=["gap", "hour"], min_events=2,
                   batch_rows=50, spill_events=spill_events)
    meta = prep.prepare(opts)
    tfds_dir = os.path.join(opts.output, meta["tfds_dir"])
    data = {f: open(os.path.join(tfds_dir, f), "rb").read() for f in sorted(os.listdir(tfds_dir))
            if ".array_record-" in f}
    del meta["source"]["flags"]["spill_events"], meta["source"]["flags"]["output"]
    return meta, data

  big_meta, big = files(10**6, "one")
  small_meta, small = files(7, "many")
  assert small == big and small_meta == big_meta
  dropped = big_meta["stats"]["rows_dropped"]
  assert dropped["duplicate"] == 4 and dropped["test_user_in_input"] == 1 and big_meta["stats"]["users"]["test"] >= 2
  for name in ("one", "many"):
    assert [p.name for p in (tmp_path / name).iterdir() if p.name.startswith(".")] == []  # no spill left

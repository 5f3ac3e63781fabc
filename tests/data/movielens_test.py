"""Tests of the MovieLens builders on the real files (skipped when $GPT_ADS_DATA / /work/shared/data is absent)."""

import os

import numpy as np
import pytest

from gpt_ads.data import movielens, prepare, store
from gpt_ads.features import NUM_RESERVED

DATA = movielens.default_data_dir()


def need(dataset):
  marker = os.path.join(DATA, dataset, "u.data" if dataset == "ml-100k" else "train/input.txt")
  if not os.path.isfile(marker):
    pytest.skip(f"{marker} not found (set GPT_ADS_DATA to the MovieLens folder)")
  return os.path.join(DATA, dataset)


def find(ds, split, user):
  src = ds.source(split)
  for i in range(len(src)):
    record = src[i]
    if record["user_id"].decode() == user:
      return record
  raise KeyError(f"no user {user!r} in {split}")


def values(ds, name, ids):
  return [ds.feature(name)["vocabulary"]["values"][int(j) - NUM_RESERVED] for j in ids]


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
  need("ml-100k")
  out = str(tmp_path_factory.mktemp("ml100k") / "ds")
  movielens.build("ml-100k", DATA, out)
  return store.open_dir(out)


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory):
  need("ml-1m")
  out = str(tmp_path_factory.mktemp("ml1m") / "ds")
  movielens.build("ml-1m", DATA, out)
  return store.open_dir(out)


def test_ml100k_counts_and_schema(ml100k):
  splits = ml100k.meta["splits"]
  assert sum(s["users"] for s in splits.values()) == 943
  assert sum(s["events"] for s in splits.values()) == 100_000
  assert ml100k.feature_names == ("item", "rating", "genre", "time_gap", "hour")
  assert ml100k.feature("item")["loss"] == "sampled_softmax"
  for name in ("item", "rating", "genre"):  # ids by decreasing training frequency
    assert (np.diff(ml100k.feature(name)["counts"][NUM_RESERVED:]) <= 0).all()
  assert sorted(ml100k.feature("rating")["vocabulary"]["values"]) == ["1", "2", "3", "4", "5"]
  labels = ml100k.meta["labels"]
  assert labels["gender"]["classes"] == ["F", "M"] and "25-34" in labels["age"]["classes"]
  assert ml100k.meta["stats"]["rows_dropped"]["duplicate"] == 0


def test_ml100k_user_matches_raw_file(ml100k):
  d = need("ml-100k")
  raw = [line.split("\t") for line in open(os.path.join(d, "u.data"))]
  user = "196"
  rows = sorted((r for r in raw if r[0] == user), key=lambda r: int(r[3]))  # stable: file order on ties
  split = prepare.user_split(user, val_fraction=0.1, test_fraction=0.1)
  record = find(ml100k, split, user)
  item_vocab = set(ml100k.feature("item")["vocabulary"]["values"])
  assert values(ml100k, "rating", record["rating"]) == [r[2] for r in rows]
  got_items = [None if j == 1 else v for j, v in zip(
      record["item"], values(ml100k, "item", np.maximum(record["item"], NUM_RESERVED)))]
  assert got_items == [r[1] if r[1] in item_vocab else None for r in rows]
  genres = movielens.ml100k_genres(d)
  assert values(ml100k, "genre", record["genre"]) == [genres[r[1]] for r in rows]
  u_user = {r.split("|")[0]: r.split("|") for r in open(os.path.join(d, "u.user"))}[user]
  labels = ml100k.meta["labels"]
  assert labels["occupation"]["classes"][int(record["labels"]["occupation"])] == u_user[3]
  assert labels["age"]["classes"][int(record["labels"]["age"])] == movielens.age_bucket(int(u_user[1]))


def test_ml1m_leave_one_out_counts(ml1m):
  splits = ml1m.meta["splits"]
  assert {s: (v["users"], v["events"]) for s, v in splits.items()} == {
      "train": (6040, 987_019 - 2 * 6040), "validation": (6040, 987_019 - 6040), "test": (6040, 987_019)}
  item = ml1m.feature("item")
  assert item["vocab_size"] == NUM_RESERVED + 3416 and item["loss"] == "sampled_softmax"
  counts = np.asarray(item["counts"][NUM_RESERVED:])
  assert (np.diff(counts) <= 0).all()  # ids by decreasing training frequency
  assert len(item["vocabulary"]["original_ids"]) == 3416


def test_ml1m_user_matches_raw_file(ml1m):
  d = need("ml-1m")
  with open(os.path.join(d, "train", "input.txt")) as fh:
    line = fh.readline().split()
  orig_items = dict(r.split() for r in open(os.path.join(d, "sas_to_original_items.txt")))
  genre = {r.split("::")[0]: r.strip().split("::")[2].split("|")[0]
           for r in open(os.path.join(d, "movies.dat"), encoding="latin-1")}
  for split, cut in (("train", 2), ("validation", 1), ("test", 0)):
    record = find(ml1m, split, "1")
    assert values(ml1m, "item", record["item"]) == line[:len(line) - cut]
    assert values(ml1m, "genre", record["genre"]) == [genre[orig_items[i]] for i in line[:len(line) - cut]]
  vocab = ml1m.feature("item")["vocabulary"]
  assert [orig_items[v] for v in vocab["values"][:20]] == vocab["original_ids"][:20]
  users_dat = {r.split("::")[0]: r.split("::") for r in open(os.path.join(d, "users.dat"))}
  orig_user = dict(r.split() for r in open(os.path.join(d, "sas_to_original_users.txt")))["1"]
  labels = ml1m.meta["labels"]
  assert labels["gender"]["classes"][int(record["labels"]["gender"])] == users_dat[orig_user][1]

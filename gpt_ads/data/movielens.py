"""MovieLens as prepared data sets: ml-100k (a real multi-feature event log) and ml-1m (SASRec next-item form).

  python -m gpt_ads.data.movielens --dataset=ml-100k|ml-1m --data_dir=PATH --output=DIR [--overwrite]

--data_dir is the folder holding ml-100k/ and ml-1m/ (default $GPT_ADS_DATA, else /work/shared/data; see its
README.md) or the data set's own folder. The files are read in place, never copied.

ml-100k: u.data ratings become events (one per rating, sorted by timestamp) with features
  item (sampled_softmax; values = MovieLens item ids), rating ("1".."5"), genre (the FIRST genre flagged in
  u.item, in u.genre order, e.g. "Action" for an Action|Comedy film) and the derived time_gap and hour;
  labels from u.user: gender (F/M), age (bucket, AGE_BUCKETS) and occupation. It goes through
  `prepare.prepare` (the gpt-ads-prepare code path) on a temporary events CSV + labels CSV, so users are split
  by hash (val/test fractions 0.1 each) and vocabularies come from training users.
ml-1m: train/input.txt (one user per line, SASRec item ids in order) with the README's leave-one-out
  protocol: every user is in every split; train = the sequence without its last two items, validation =
  without its last item, test = the full sequence (the target of validation / test is the final event).
  Features item (sampled_softmax; values = SASRec item ids "1".."3416", `original_ids` = MovieLens movie ids,
  all 3,416 items, ids by decreasing training count, ties by value string), genre (first genre of
  movies.dat, joined through sas_to_original_items.txt) and the user's gender, age (bucket) and occupation
  (code) from users.dat through sas_to_original_users.txt, repeated on every event (context: configs/ml1m.py
  gives them loss weight 0); the same three are also labels. user_id = the SASRec user id (line number). No
  timestamps.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile

import numpy as np

from gpt_ads import features as features_lib
from gpt_ads.data import prepare as prepare_lib
from gpt_ads.data import store, writer

DATASETS = ("ml-100k", "ml-1m")
# (lowest age, bucket name); the ml-1m codes 1, 18, 25, 35, 45, 50, 56 are these buckets' lower ends.
AGE_BUCKETS = ((0, "00-17"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"), (56, "56+"))
CONTEXT = ("gender", "age", "occupation")  # ml-1m: user demographics repeated on every event (context features)
ML1M_PROTOCOL = ("leave-one-out (data README): test = full train/input.txt line, validation = the line without "
                 "its last item, train = without its last two items; the target is each sequence's final event")


def default_data_dir() -> str:
  return os.environ.get("GPT_ADS_DATA", "/work/shared/data")


def dataset_dir(data_dir: str, dataset: str) -> str:
  """The folder of `dataset` under `data_dir` (or `data_dir` itself); a clear error when absent."""
  if dataset not in DATASETS:
    raise ValueError(f"--dataset={dataset!r}: choose one of {DATASETS}")
  marker = "u.data" if dataset == "ml-100k" else os.path.join("train", "input.txt")
  for d in (os.path.join(data_dir, dataset), data_dir):
    if os.path.isfile(os.path.join(d, marker)):
      return d
  raise ValueError(f"{data_dir}: no {dataset}/{marker}; pass --data_dir (or set GPT_ADS_DATA) to the folder "
                   "holding the MovieLens files")


def age_bucket(age: int) -> str:
  return [name for low, name in AGE_BUCKETS if age >= low][-1]


def _lines(path: str, sep: str) -> list[list[str]]:
  with open(path, encoding="latin-1") as fh:  # titles hold a few latin-1 bytes in some releases
    return [line.rstrip("\r\n").split(sep) for line in fh if line.strip()]


def _write_csv(path: str, header: list[str], columns: list[list[str]]) -> None:
  import pyarrow as pa
  import pyarrow.csv as pacsv
  pacsv.write_csv(pa.table({h: pa.array(c, pa.string()) for h, c in zip(header, columns)}), path)


# ----------------------------------------------------------------------------------------------------- ml-100k

def ml100k_genres(d: str) -> dict[str, str]:
  """{item id: first flagged genre (u.genre order), "unknown" when none is flagged}."""
  genres = [g for g, _ in _lines(os.path.join(d, "u.genre"), "|") if g]
  out = {}
  for row in _lines(os.path.join(d, "u.item"), "|"):
    flags = row[-len(genres):]
    out[row[0]] = next((g for g, f in zip(genres, flags) if f == "1"), "unknown")
  return out


def build_ml100k(data_dir: str, output: str, *, overwrite: bool = False, log=lambda line: None) -> dict:
  """ml-100k through `prepare.prepare`; returns the schema.json dict."""
  d = dataset_dir(data_dir, "ml-100k")
  genre = ml100k_genres(d)
  ratings = _lines(os.path.join(d, "u.data"), "\t")  # user item rating timestamp
  users = _lines(os.path.join(d, "u.user"), "|")  # user age gender occupation zip
  with tempfile.TemporaryDirectory(prefix="gpt_ads_ml100k_") as tmp:
    events, labels = os.path.join(tmp, "events.csv"), os.path.join(tmp, "labels.csv")
    user, item, rating, ts = (list(c) for c in zip(*ratings))
    _write_csv(events, ["user", "timestamp", "item", "rating", "genre"],
               [user, ts, item, rating, [genre.get(i, "") for i in item]])
    _write_csv(labels, ["user", "gender", "age", "occupation"],
               [[u[0] for u in users], [u[2] for u in users], [age_bucket(int(u[1])) for u in users],
                [u[3] for u in users]])
    options = prepare_lib.PrepareOptions(
        input=[events], user_col="user", time_col="timestamp", features=["item", "rating", "genre"],
        sampled=["item"], labels=[labels], derive_time=["gap", "hour"], output=output, overwrite=overwrite,
        val_fraction=0.1, test_fraction=0.1)
    return prepare_lib.prepare(options, log=log, extra_source={
        "dataset": "ml-100k", "data_dir": os.path.abspath(d), "files": ["u.data", "u.item", "u.genre", "u.user"],
        "genre": "first genre flagged in u.item (u.genre order); 'unknown' when none",
        "label_source": "u.user: gender, age bucket, occupation",
        "note": "inputs / labels are temporary CSVs written from these files"})


# ------------------------------------------------------------------------------------------------------- ml-1m

def ml1m_sequences(d: str) -> list[np.ndarray]:
  """Each SASRec user's item ids (int32), users in line order (user i = line i, 1-based)."""
  with open(os.path.join(d, "train", "input.txt")) as fh:
    return [np.array(line.split(), np.int32) for line in fh if line.strip()]


def _mapping(path: str) -> dict[int, str]:
  """sas_to_original_*.txt: {SASRec id: original id}."""
  return {int(row[0]): row[1] for row in _lines(path, " ")}


def build_ml1m(data_dir: str, output: str, *, overwrite: bool = False, log=lambda line: None) -> dict:
  """ml-1m (SASRec form) with the leave-one-out splits, written with `writer.write`; returns schema.json."""
  d = dataset_dir(data_dir, "ml-1m")
  seqs = ml1m_sequences(d)
  items = _mapping(os.path.join(d, "sas_to_original_items.txt"))
  users = _mapping(os.path.join(d, "sas_to_original_users.txt"))
  movie_genre = {row[0]: row[2].split("|")[0] for row in _lines(os.path.join(d, "movies.dat"), "::")}
  user_rows = {row[0]: row for row in _lines(os.path.join(d, "users.dat"), "::")}  # id gender age occupation zip
  short = [i for i, s in enumerate(seqs, 1) if len(s) < 3]
  if short:
    raise ValueError(f"{d}/train/input.txt: users {short[:5]} have fewer than 3 items; leave-one-out needs 3")
  if len(items) != max(int(s.max()) for s in seqs) or len(users) != len(seqs):
    raise ValueError(f"{d}: the sas_to_original_*.txt mappings do not cover train/input.txt")
  log(f"{d}: {len(seqs):,} users, {sum(map(len, seqs)):,} events, {len(items):,} items")

  # Item ids: every item, by decreasing count in the training sequences, ties by value string.
  train_counts = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=len(items) + 1)
  item_order = sorted(range(1, len(items) + 1), key=lambda i: (-train_counts[i], str(i)))
  item_lut = np.zeros(len(items) + 1, np.int32)
  item_lut[item_order] = features_lib.NUM_RESERVED + np.arange(len(item_order))
  genre_of = [movie_genre.get(items.get(i, ""), "") for i in range(len(items) + 1)]  # by SASRec item id
  genre_counts = collections.Counter(genre_of[i] for s in seqs for i in s[:-2])
  genres = sorted((g for g in genre_counts if g), key=lambda g: (-genre_counts[g], g))
  genre_id = {g: features_lib.NUM_RESERVED + k for k, g in enumerate(genres)}
  genre_lut = np.array([genre_id.get(g, features_lib.OOV_ID) for g in genre_of], np.int32)

  labels = {"gender": {"kind": "categorical", "classes": ["F", "M"]},
            "age": {"kind": "categorical", "classes": [name for _, name in AGE_BUCKETS]},
            "occupation": {"kind": "categorical", "classes": [str(k) for k in range(21)]}}

  def user_labels(u: int) -> dict:
    row = user_rows.get(users[u])
    if row is None:
      return {k: float("nan") for k in labels}
    return {"gender": float(labels["gender"]["classes"].index(row[1])),
            "age": float(labels["age"]["classes"].index(age_bucket(int(row[2])))),
            "occupation": float(int(row[3]))}

  cut = {"train": 2, "validation": 1, "test": 0}  # items removed from the end of each line

  def context_id(u: int, name: str) -> int:  # the user's class as an event feature id (OOV when unknown)
    value = user_labels(u)[name]
    return features_lib.OOV_ID if np.isnan(value) else features_lib.NUM_RESERVED + int(value)

  def records(split: str):
    def generate():
      for u, seq in enumerate(seqs, 1):
        s = seq[:len(seq) - cut[split]]
        record = {"user_id": str(u), "item": item_lut[s], "genre": genre_lut[s], "labels": user_labels(u)}
        for name in CONTEXT:
          record[name] = np.full(len(s), context_id(u, name), np.int32)
        yield record
    return generate

  features = [
      {"name": "item", "vocab_size": features_lib.NUM_RESERVED + len(item_order), "loss": "sampled_softmax",
       "source": "train/input.txt",
       "vocabulary": {"kind": "values", "values": [str(i) for i in item_order], "min_count": 0,
                      "max_size": len(item_order), "original_ids": [items[i] for i in item_order],
                      "values_are": "SASRec item ids; original_ids: MovieLens MovieIDs (movies.dat)"}},
      {"name": "genre", "vocab_size": features_lib.NUM_RESERVED + len(genres), "loss": "softmax",
       "source": "movies.dat (first genre)",
       "vocabulary": {"kind": "values", "values": genres, "min_count": 1, "max_size": len(genres)}}]
  features += [{"name": name, "vocab_size": features_lib.NUM_RESERVED + len(labels[name]["classes"]),
                "loss": "softmax", "source": "users.dat (the user's; the same on every event)",
                "vocabulary": {"kind": "values", "values": labels[name]["classes"], "min_count": 0,
                               "max_size": len(labels[name]["classes"])}}
               for name in CONTEXT]
  n = sum(map(len, seqs))
  stats = {"input_rows": n, "users": {s: len(seqs) for s in store.SPLITS},
           "events": {s: n - c * len(seqs) for s, c in cut.items()}, "protocol": ML1M_PROTOCOL,
           "items_without_genre": sum(1 for g in genre_of[1:] if not g),
           "policy": {"vocabulary": "item: all items, ids by decreasing training count (ties by value string); "
                                    "genre: training genres by decreasing count"}}
  source = {"dataset": "ml-1m", "data_dir": os.path.abspath(d), "protocol": ML1M_PROTOCOL,
            "files": ["train/input.txt", "sas_to_original_items.txt", "sas_to_original_users.txt", "movies.dat",
                      "users.dat"],
            "user_id": "SASRec user id (line of train/input.txt); sas_to_original_users.txt maps it back"}
  log(f"writing {os.path.abspath(output)} ...")
  return writer.write(output, features=features, splits={s: records(s) for s in store.SPLITS}, labels=labels,
                     stats=stats, source=source, overwrite=overwrite)


def build(dataset: str, data_dir: str, output: str, **kwargs) -> dict:
  """Builds `dataset` ("ml-100k" or "ml-1m") from `data_dir` into `output`; returns its schema.json dict."""
  if dataset not in DATASETS:
    raise ValueError(f"--dataset={dataset!r}: choose one of {DATASETS}")
  return (build_ml100k if dataset == "ml-100k" else build_ml1m)(data_dir, output, **kwargs)


def main(argv):
  from absl import app, flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    meta = build(f.dataset, f.data_dir, f.output, overwrite=f.overwrite, log=lambda line: print(line, flush=True))
  except (ValueError, OSError) as e:
    print(f"gpt_ads.data.movielens: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"{f.dataset}: " + "; ".join(f"{s}: {v['users']:,} users / {v['events']:,} events"
                                       for s, v in meta["splits"].items()) + f" -> {os.path.abspath(f.output)}")


def run():
  from absl import app, flags
  flags.DEFINE_enum("dataset", None, list(DATASETS), "Which MovieLens data set.")
  flags.DEFINE_string("data_dir", default_data_dir(), "Folder holding ml-100k/ and ml-1m/ (or the data set's).")
  flags.DEFINE_string("output", None, "Directory of the prepared data set.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
  flags.mark_flags_as_required(["dataset", "output"])
  app.run(main)


if __name__ == "__main__":
  run()

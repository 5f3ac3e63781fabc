"""Prepared data sets: written atomically, read back exactly, and packed rows that keep users apart."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import subprocess_env, tiny_config
from gpt_ads.data import datasets, pipeline, store, writer
from gpt_ads.model import Model, ModelConfig
from gpt_ads.model.model import dummy_batch
from gpt_ads.objective import objective
from numerics import assert_close

FEATURES = [{"name": "item", "vocab_size": 50, "loss": "sampled_softmax", "vocabulary": {"kind": "test"}},
            {"name": "kind", "vocab_size": 6, "loss": "softmax", "vocabulary": {"kind": "test"}}]


def _users(n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    k = int(rng.integers(1, 30))
    out.append({"user_id": f"s{seed}-u{i}", "item": rng.integers(1, 50, k), "kind": rng.integers(2, 6, k),
                "labels": {"y": float(i % 3)}})
  return out


def test_write_then_read_back(tmp_path):
  splits = {"train": _users(40, 0), "validation": _users(5, 1), "test": _users(7, 2)}
  meta = writer.write(str(tmp_path / "ds"), features=FEATURES, splits={k: (lambda v=v: iter(v)) for k, v in
                                                                      splits.items()},
                     labels={"y": {"kind": "numeric"}}, stats={"note": 1})
  prepared = store.open_dir(str(tmp_path / "ds"))
  assert prepared.meta == json.loads(json.dumps(meta))
  assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temporary directory left behind
  for split, users in splits.items():
    fast, tfds_src = prepared.source(split), prepared.tfds_source(split)  # same records, two readers
    assert len(fast) == len(tfds_src) == len(users) == meta["splits"][split]["users"]
    batched = fast._getitems(list(range(len(fast)))[::-1])[::-1]
    for src in (fast, tfds_src, batched):
      got = {src[i]["user_id"].decode(): src[i] for i in range(len(users))}
      for u in users:
        r = got[u["user_id"]]
        np.testing.assert_array_equal(r["item"], u["item"])
        np.testing.assert_array_equal(r["kind"], u["kind"])
        assert r["labels"]["y"] == u["labels"]["y"]
  counts = prepared.counts()["item"]
  np.testing.assert_array_equal(counts, np.bincount(np.concatenate([u["item"] for u in splits["train"]]),
                                                    minlength=50))


@pytest.mark.parametrize("bad, msg", [({"item": np.array([0, 3])}, "ids must lie in"),
                                      ({"item": np.array([3, 50])}, "ids must lie in"),
                                      ({"kind": np.array([2])}, "same, non-zero number")])
def test_bad_records_leave_nothing_behind(tmp_path, bad, msg):
  users = _users(10, 0)
  users[4] = {**users[4], "item": np.array([3, 4]), "kind": np.array([2, 3]), **bad}

  def gen():
    yield from users

  with pytest.raises(ValueError, match=msg):
    writer.write(str(tmp_path / "ds"), features=FEATURES, splits={"train": gen, "validation": gen, "test": gen})
  assert os.listdir(tmp_path) == []


def test_existing_output_and_non_data_sets_are_errors(tmp_path):
  (tmp_path / "ds").mkdir()
  with pytest.raises(ValueError, match="already exists"):
    writer.write(str(tmp_path / "ds"), features=FEATURES, splits={"train": lambda: iter(_users(3, 0))})
  with pytest.raises(ValueError, match="not a prepared data set"):
    store.open_dir(str(tmp_path / "ds"))


def test_generated_data_is_written_once_and_packed_users_stay_apart(tmp_path):
  """Generated users go through store + Grain; changing user A in a packed row never changes user B's outputs."""
  config = tiny_config()
  data = datasets.load(config, str(tmp_path))
  assert len(data.train) == config.data.num_train_users and data.references is not None
  mtime = os.path.getmtime(tmp_path / "generated_data" / "schema.json")
  again = datasets.load(config, str(tmp_path))  # same settings: reused, not rewritten, references kept
  assert os.path.getmtime(tmp_path / "generated_data" / "schema.json") == mtime
  assert again.references == data.references

  names, max_len = data.schema.names, config.model.max_len
  batch = next(pipeline.TrainIterator(data.train, names=names, max_len=max_len, global_batch=8, seed=0))
  row = int(np.argmax(batch["segment_ids"].max(axis=1)))  # the row with the most users
  assert batch["segment_ids"][row].max() >= 2
  model = Model(data.schema, ModelConfig.from_config(config.model))
  params = nn.unbox(model.init(jax.random.key(0), dummy_batch(data.schema, 1, max_len))["params"])
  one = {k: v[row:row + 1] for k, v in batch.items()}
  changed = {k: v.copy() for k, v in one.items()}
  a_events = changed["segment_ids"][0] == 1
  for f in data.schema:
    changed[f.name][0, a_events] = np.where(changed[f.name][0, a_events] == 2, 3, 2)  # user A: other events
  out, _ = model.apply({"params": params}, one)
  out_changed, _ = model.apply({"params": params}, changed)
  others = ~a_events
  for name in out:  # every output, the copy term's gates and ids too
    assert_close(out[name][0, others], out_changed[name][0, others], err_msg=name)
  for name in data.schema.names:
    assert not np.allclose(out[name][0, a_events], out_changed[name][0, a_events])
  # No target crosses users: the last event of each user predicts nothing.
  _, mask = objective.targets(one, data.schema)  # [b, t]: position t predicts event t + 1
  seg = one["segment_ids"][0]
  last_of_user = (seg[:-1] > 0) & (seg[1:] != seg[:-1])
  assert not np.asarray(mask[names[0]])[0, :-1][last_of_user].any()


def test_a_run_picks_features_loss_kinds_and_training_users(tmp_path):
  """config.data.features selects features, a config `loss` replaces the data set's, max_train_users cuts train."""
  splits = {"train": _users(40, 0), "validation": _users(5, 1), "test": _users(7, 2)}
  writer.write(str(tmp_path / "ds"), features=FEATURES, splits={k: (lambda v=v: iter(v)) for k, v in splits.items()},
              labels={"y": {"kind": "numeric"}})
  c = tiny_config(**{"data.dir": str(tmp_path / "ds")})
  c.data.features = ("item",)
  c.data.max_train_users = 15
  c.schema.features = {"item": {"loss": "softmax"}}
  data = datasets.load(c, str(tmp_path / "run"))
  assert data.schema.names == ("item",) and data.schema["item"].loss == "softmax"
  assert data.schema["item"].vocab_size == 50  # the data set's, always
  assert len(data.train) == 15 and len(data.test) == 7
  np.testing.assert_array_equal(data.train[14]["item"], store.open_dir(c.data.dir).source("train")[14]["item"])
  c.data.features = ("item", "nope")
  with pytest.raises(ValueError, match="has no feature.*nope"):
    datasets.load(c, str(tmp_path / "run"))


_READ_AS_PROCESS = """
import json, sys
from gpt_ads.data import pipeline, store
source = store.open_dir(sys.argv[1]).source("train")
it = pipeline.TrainIterator(source, names=("item", "kind"), max_len=8, global_batch=8, seed=0, num_shards=2,
                            process_index=int(sys.argv[2]), process_count=2)
for _ in range(5):
  next(it)
print(json.dumps(source.files_read()))
"""


def test_sharded_output_each_process_reads_its_own_files(tmp_path):
  """num_shards=4: four ArrayRecord files per split; two processes (one input shard each) read disjoint files,
  two of them each; input shards that do not divide the files read every num_shards-th record instead."""
  splits = {"train": _users(80, 0), "validation": _users(8, 1), "test": _users(8, 2)}
  writer.write(str(tmp_path / "ds"), features=FEATURES, splits={k: (lambda v=v: iter(v)) for k, v in splits.items()},
              num_shards=4)
  source = store.open_dir(str(tmp_path / "ds")).source("train")
  files = sorted({f for f, _, _ in source._shards})
  assert len(files) == 4 and all(f.endswith("-of-00004") for f in files)
  for num_shards in (1, 2, 3, 4):
    keys = [pipeline.input_shard_keys(source, s, num_shards) for s in range(num_shards)]
    np.testing.assert_array_equal(np.sort(np.concatenate(keys)), np.arange(len(source)))  # each user once
  np.testing.assert_array_equal(pipeline.input_shard_keys(source, 0, 1), np.arange(len(source)))
  np.testing.assert_array_equal(pipeline.input_shard_keys(source, 1, 3), np.arange(len(source))[1::3])

  procs = [subprocess.Popen([sys.executable, "-c", _READ_AS_PROCESS, str(tmp_path / "ds"), str(i)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
           for i in range(2)]
  read = []
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    read.append(json.loads(out.strip().splitlines()[-1]))
  assert read == [[files[0], files[2]], [files[1], files[3]]]


@pytest.mark.parametrize("num_shards, process", [(1, False), (3, False), (3, True)])
def test_known_sizes_write_the_same_files_as_the_cut_stream(tmp_path, monkeypatch, num_shards, process):
  """With `sizes` the records go straight into their shards (`process`: written by the child process large data
  sets get); without, one stream file is cut at the end."""
  from gpt_ads.data import records
  if process:
    monkeypatch.setattr(writer, "PROCESS_FROM_BYTES", 0)
  users = _users(30, 0)
  encoder = records.Encoder([f["name"] for f in FEATURES], ("y",))
  sizes = {"train": (30, sum(encoder.size(len(u["item"]), len(u["user_id"].encode())) for u in users))}

  def files(name, **kw):
    with writer.Writer(str(tmp_path / name), features=FEATURES, labels={"y": {"kind": "numeric"}},
                      splits=("train",), num_shards=num_shards, **kw) as w:
      for u in users:
        w.add("train", u)
      meta = w.finish()
    d = tmp_path / name / meta["tfds_dir"]
    return {p.name: p.read_bytes() for p in d.iterdir() if ".array_record-" in p.name}

  cut, planned = files("cut"), files("planned", sizes=sizes)
  assert cut == planned and len(cut) == num_shards
  with pytest.raises(ValueError, match="sizes said"):
    files("wrong", sizes={"train": (31, sizes["train"][1])})
  assert not (tmp_path / "wrong").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_dead_writer_process_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
  psutil = pytest.importorskip("psutil")
  monkeypatch.setattr(writer, "PROCESS_FROM_BYTES", 0)
  out = tmp_path / "out"
  with pytest.raises(OSError, match="the ArrayRecord writer process ended"):
    with writer.Writer(str(out), features=FEATURES, splits=("train",), sizes={"train": (4000, 10**6)}) as w:
      [child] = [p for p in psutil.Process().children() if "shards.serve" in " ".join(p.cmdline())]
      child.kill()
      child.wait()
      for _ in range(4):
        w.add_users("train", [f"u{j}" for j in range(1000)], np.full(1000, 3),
                    {f["name"]: np.full(3000, 2, np.int32) for f in FEATURES})
      w.finish()
  assert not out.exists() and not list(tmp_path.iterdir())

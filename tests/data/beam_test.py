"""gpt-ads-prepare on Apache Beam writes the same bytes as the local engine (issue 22 item 2)."""

import filecmp
import os

import numpy as np
import pytest

from gpt_ads.cli import prepare as prepare_cli
from gpt_ads.data import prepare as prep

pytest.importorskip("apache_beam")

TWO_WORKERS = "--runner=DirectRunner,--direct_num_workers=2,--direct_running_mode=multi_processing"


def _logs(tmp_path) -> dict:
  """Three CSV files (two --input, one --test_input) with what the policy must handle: unsorted times, exact
  duplicates, ties in time across files, missing users / times / values, a test user also in --input."""
  rng = np.random.default_rng(0)
  users = [f"u{i:03d}" for i in range(60)]
  paths = {}
  for name, n in (("a.csv", 700), ("b.csv", 500), ("test.csv", 150)):
    lines = ["user,ts,ad,device,note"]
    for i in range(n):
      user = users[rng.integers(10 if name == "test.csv" else len(users))]
      ts = str(1_700_000_000 + int(rng.integers(0, 5000)))
      ad = f"ad{int(rng.zipf(1.5)) % 90}"
      lines.append(",".join([user, ts, ad, ["mobile", "desktop", ""][i % 3], "x,y" if i % 7 else "z"]) if i % 53
                   else ",".join(["" if i % 2 else user, "" if not i % 2 else ts, ad, "tv", "z"]))
      if i % 41 == 0:
        lines.append(lines[-1])  # an exact duplicate
    lines = [lines[0]] + [l.replace(",x,y", ',"x,y"') for l in lines[1:]]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    paths[name] = str(tmp_path / name)
  labels = tmp_path / "labels.csv"
  labels.write_text("user,is_bot\n" + "".join(f"{u},{i % 2}\n" for i, u in enumerate(users[::3])))
  return {"input": [paths["a.csv"], paths["b.csv"]], "test_input": [paths["test.csv"]], "labels": [str(labels)]}


def _prepare(tmp_path, out: str, engine: str, **extra) -> None:
  options = prep.PrepareOptions(**_logs(tmp_path), output=out, user_col="user", time_col="ts",
                                features=["ad", "device"], sampled=["ad"], derive_time=["gap", "hour", "weekday"],
                                hash_buckets={"device": 5}, val_fraction=0.2, batch_rows=97,
                                beam_pipeline_options=engine, **extra)
  assert prepare_cli.execute(options, log=lambda line: None) == 0


def _same_tree(a: str, b: str) -> None:
  names_a = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
  names_b = sorted(os.path.relpath(os.path.join(d, f), b) for d, _, fs in os.walk(b) for f in fs)
  assert names_a == names_b
  for name in names_a:
    assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name


@pytest.mark.parametrize("engine,extra", [(TWO_WORKERS, {"num_shards": 2}), ("--runner=DirectRunner",
                                                                             {"spill_events": 50})])
def test_beam_writes_the_local_engines_bytes(tmp_path, engine, extra):
  out = str(tmp_path / "out")
  _prepare(tmp_path, out, "", **extra)
  os.rename(out, str(tmp_path / "local"))
  _prepare(tmp_path, out, engine, **extra)  # the same --output path: schema.json records it
  _same_tree(str(tmp_path / "local"), out)
  assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []  # no temporary files left


def test_a_bad_row_is_the_same_one_line_error_on_beam(tmp_path, capsys):
  bad = tmp_path / "bad.csv"
  bad.write_text("user,ts,ad,device\nu1,100,a,m\nu2,yesterday,b,m\n")
  for engine in ("", "--runner=DirectRunner"):
    options = prep.PrepareOptions(input=[str(bad)], output=str(tmp_path / "out"), user_col="user", time_col="ts",
                                  features=["ad", "device"], beam_pipeline_options=engine)
    assert prepare_cli.execute(options, log=lambda line: None) == 2
    assert not (tmp_path / "out").exists()
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 2 and lines[0] == lines[1] and "row 2, column 'ts'" in lines[0], lines

"""benchmarks/ml1m.py end to end on the real ml-1m (a few steps, a few users): the JSON contract scripts rely on.

Skipped when the MovieLens files are absent ($GPT_ADS_DATA / /work/shared/data).
"""

import json
import os
import subprocess
import sys

import pytest

from gpt_ads.data import movielens

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ml1m_benchmark_writes_the_contract_fields(tmp_path):
  data = movielens.default_data_dir()
  if not os.path.isfile(os.path.join(data, "ml-1m", "train", "input.txt")):
    pytest.skip(f"{data}/ml-1m not found (set GPT_ADS_DATA to the MovieLens folder)")
  out = tmp_path / "out" / "ml1m.json"
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "ml1m.py"), f"--data_dir={data}",
         f"--workdir={tmp_path / 'work'}", f"--out={out}", "--variants=item", "--steps=2", "--max_users=48",
         "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=2", "--set", "model.max_len=32"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  for key in ("test_ndcg@10", "test_hr@10", "val_ndcg@10", "wall_seconds"):
    assert key in report, key
  assert 0.0 <= report["test_ndcg@10"] <= report["test_hr@10"] <= 1.0
  assert report["wall_seconds"] > 0 and report["best_step"] in (1, 2)
  run = report["variants"]["item"]
  assert sorted(run["validation_by_step"]) == ["1", "2"]  # every kept checkpoint was ranked on validation
  assert run["users"] == 48 and run["config"]["train"]["num_steps"] == 2

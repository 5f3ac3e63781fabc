"""benchmarks/ml1m.py end to end on the real ml-1m (a few steps, a few users): the JSON contract scripts rely on,
and a SIGTERM that stops it in one line, after which the same command resumes and finishes.

Skipped when the MovieLens files are absent ($GPT_ADS_DATA / /work/shared/data).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gpt_ads.data import movielens

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ml1m_benchmark_stops_in_one_line_resumes_and_writes_the_contract_fields(tmp_path):
  data = movielens.default_data_dir()
  if not os.path.isfile(os.path.join(data, "ml-1m", "train", "input.txt")):
    pytest.skip(f"{data}/ml-1m not found (set GPT_ADS_DATA to the MovieLens folder)")
  out, work = tmp_path / "out" / "ml1m.json", tmp_path / "work"
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "ml1m.py"), f"--data_dir={data}", f"--workdir={work}",
         f"--out={out}", "--variants=item", "--steps=40", "--max_users=48", "--set", "train.checkpoint_every=20",
         "--set", "train.keep_checkpoints=2", "--set", "train.log_every=2", "--set", "model.max_len=32"]
  first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
  deadline = time.time() + 300
  while not (work / "item" / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)  # training has begun (the stop may land in training or in the ranking after it)
  first.send_signal(signal.SIGTERM)
  _, stderr = first.communicate(timeout=300)
  said = [line for line in stderr.splitlines() if line.startswith("benchmarks/ml1m.py:")]
  assert first.returncode == 143 and len(said) == 1 and "Traceback" not in stderr, stderr[-3000:]
  assert "stopped by SIGTERM" in said[0] and "rerun the same command to resume" in said[0]
  assert not out.exists()

  again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  report = json.loads(out.read_text())
  for key in ("test_ndcg@10", "test_hr@10", "val_ndcg@10", "wall_seconds"):
    assert key in report, key
  assert 0.0 <= report["test_ndcg@10"] <= report["test_hr@10"] <= 1.0
  assert report["wall_seconds"] > 0 and report["best_step"] in (20, 40)
  run = report["variants"]["item"]
  assert sorted(run["validation_by_step"]) == ["20", "40"]  # every kept checkpoint was ranked on validation
  assert run["users"] == 48 and run["config"]["train"]["num_steps"] == 40 and run["attempts"] == 2

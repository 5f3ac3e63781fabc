"""gpt-ads-downstream: metrics against brute force, and the three tasks end to end on a tiny generated run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpt_ads import downstream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_auc_and_recall_at_fpr():
  rng = np.random.default_rng(0)
  scores, labels = rng.normal(size=300), rng.random(300) < 0.3
  scores[labels] += 1.0
  pos, neg = scores[labels], scores[~labels]
  brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
  assert downstream.auc(scores, labels) == pytest.approx(brute)
  assert downstream.auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)  # ties count half
  r = downstream.recall_at_fpr(scores, labels, 0.05)
  k = int(0.05 * len(neg))  # no ties: flag exactly the top k negatives' threshold
  thr = np.sort(neg)[::-1][k]
  assert np.sum(neg > thr) == k and r == pytest.approx(np.mean(pos > thr))
  assert downstream.recall_at_fpr([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], 0.01) == 1.0
  # Ties at the threshold: 10 negatives and 10 positives all tied -> FPR 0.1 flags a tenth of the positives.
  assert downstream.recall_at_fpr(np.ones(20), np.arange(20) < 10, 0.1) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def run_dir(trained_run):
  return trained_run


def _downstream(workdir, *args):
  return subprocess.run([sys.executable, "-m", "gpt_ads.downstream", f"--workdir={workdir}",
                         f"--data_dir={workdir}/generated_data", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env={**os.environ, "XLA_FLAGS": ""})


@pytest.mark.parametrize("label,task", [("converted", "probe"), ("is_bot", "anomaly"), ("is_bot", "finetune")])
def test_tasks_write_their_metrics(run_dir, label, task):
  proc = _downstream(run_dir, f"--label={label}", f"--task={task}", "--finetune_steps=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.load(open(os.path.join(run_dir, "downstream", f"{label}_{task}.json")))
  assert 0.0 <= result["auc"] <= 1.0 and set(result["recall_at_fpr"]) == {"0.01", "0.05"}
  assert result["num_test"] == 128 and result["positives_test"] > 0
  assert result["bayes"]["auc"] > 0.6  # the generator's posterior separates the classes
  assert np.isfinite(result["bayes_fraction"])
  if task == "anomaly":
    assert {"nll", "density", "combined", "surprise/ad_id"} <= set(result["per_score"])


def test_bad_label_is_one_line(run_dir):
  proc = _downstream(run_dir, "--label=segment", "--task=probe")  # a label, but not binary
  assert proc.returncode == 2 and "gpt-ads-downstream: error:" in proc.stderr and "Traceback" not in proc.stderr
  proc = _downstream(run_dir, "--label=nope", "--task=probe")
  assert proc.returncode == 2 and "has labels" in proc.stderr

"""gpt-ads-downstream: metrics against brute force, each task's scorer on users with a planted signal, and the three
tasks end to end (the JSON fields and counts scripts read) on a tiny generated run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_env
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


class _PlantedContext:
  """What the tasks read of a run (`ctx.embed(split)`, `ctx.nll(split)`, `ctx.labels`), for users whose label is
  planted: positives' user vectors are shifted along one direction (by `shift`, in units of the noise) and their
  per-event NLL is lower by `nll_gap` nats (a bot far more predictable than a person). Every split has 15%
  positives."""

  def __init__(self, shift: float, nll_gap: float, d: int = 8, n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.labels, self._embed, self._nll = {}, {}, {}
    for i, split in enumerate(("train", "validation", "test")):
      y = (rng.random(n) < 0.15).astype(float)
      e = rng.normal(size=(n, d))
      e[:, 0] += shift * y
      self.labels[split], self._embed[split] = y, e
      self._nll[split] = {"a": rng.normal(4.0, 0.5, n) - nll_gap * y, "b": rng.normal(2.0, 0.5, n)}

  def embed(self, split):
    return self._embed[split]

  def nll(self, split):
    return self._nll[split]


def test_probe_finds_a_planted_linear_signal():
  """The optimal score here is the planted direction itself (two Gaussians, one covariance): the probe, fitted on
  the training users with its L2 chosen on validation, must reach 97% of that score's AUC on the test users,
  and an unplanted run must stay near chance."""
  ctx = _PlantedContext(shift=2.0, nll_gap=0.0)
  y = ctx.labels["test"]
  optimal = downstream.auc(ctx.embed("test")[:, 0], y)  # ~0.92 for a 2-sigma shift
  got = downstream.auc(downstream.probe(ctx)["scores"], y)
  assert optimal > 0.85 and got >= 0.97 * optimal, (got, optimal)
  null = downstream.auc(downstream.probe(_PlantedContext(shift=0.0, nll_gap=0.0))["scores"], y)
  assert abs(null - 0.5) < 0.1, null


def test_anomaly_finds_planted_bots_without_labels():
  """Positives whose NLL is 4 nats lower (8 standard deviations of feature a, 5.7 of the two features' sum) and
  whose vectors lie 6 sigma off the crowd: the NLL score, the density score and their combination each rank
  them above the negatives, without a label. The density's Gaussian is fitted on every training user, the
  planted ones too, whose spread it absorbs: it is the weaker score (AUC 0.79-0.87 over three seeds)."""
  ctx = _PlantedContext(shift=6.0, nll_gap=4.0)
  out = downstream.anomaly(ctx)
  for name, least in (("nll", 0.97), ("surprise/a", 0.97), ("combined", 0.95), ("density", 0.75)):
    assert out["per_score"][name]["auc"] > least, (name, out["per_score"][name])
  assert out["per_score"]["surprise/b"]["auc"] < 0.65  # the feature that carries no signal does not find it
  assert downstream.auc(out["scores"], ctx.labels["test"]) == out["per_score"]["combined"]["auc"]


@pytest.fixture(scope="module")
def run_dir(trained_run):
  return trained_run


def _downstream(workdir, *args):
  return subprocess.run([sys.executable, "-m", "gpt_ads.downstream", f"--workdir={workdir}",
                         f"--data_dir={workdir}/generated_data", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=subprocess_env())


@pytest.mark.parametrize("label,task", [("converted", "probe"), ("is_bot", "anomaly"), ("is_bot", "finetune")])
def test_tasks_write_their_metrics(run_dir, label, task):
  proc = _downstream(run_dir, f"--label={label}", f"--task={task}", "--finetune_steps=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.load(open(os.path.join(run_dir, "downstream", f"{label}_{task}.json")))
  assert set(result) >= {"auc", "recall_at_fpr", "bayes", "bayes_fraction", "seconds"}  # the fields scripts read
  assert set(result["recall_at_fpr"]) == {"0.01", "0.05"}
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

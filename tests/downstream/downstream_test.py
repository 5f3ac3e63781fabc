"""gpt-ads-downstream: metrics against brute force, each task's scorer on users with a planted signal, and the three
tasks end to end (the JSON fields and counts scripts read) on a tiny generated run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_env
from gpt_ads.downstream import detectors, tasks as downstream

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _old_auc(scores, labels) -> float:
  """The hand-written Mann-Whitney AUC the package had before scikit-learn (kept as a reference)."""
  from scipy.stats import rankdata
  scores, pos = np.asarray(scores, float), np.asarray(labels) > 0.5
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  ranks = rankdata(scores)
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _old_recall_at_fpr(scores, labels, fpr: float) -> float:
  """The hand-written randomized-threshold recall the package had before scikit-learn (kept as a reference)."""
  scores, pos = np.asarray(scores, float), np.asarray(labels) > 0.5
  neg = np.sort(scores[~pos])[::-1]
  allowed = fpr * len(neg)
  thr = neg[min(int(np.floor(allowed)), len(neg) - 1)]
  above, tied = np.sum(neg > thr), np.sum(neg == thr)
  q = float(np.clip((allowed - above) / tied, 0.0, 1.0))
  return float(np.mean(scores[pos] > thr) + q * np.mean(scores[pos] == thr))


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_the_hand_written_ones(ties):
  """scikit-learn's ROC (gpt_ads.downstream.detectors) gives the AUC and recall at fixed FPR the package computed by
  hand,
  on untied scores and on scores with many ties (rounded to a few values), at FPRs on and between ROC vertices."""
  rng = np.random.default_rng(0)
  scores, labels = rng.normal(size=400), rng.random(400) < 0.3
  scores[labels] += 1.0
  if ties:
    scores = np.round(scores * 2) / 2
  assert detectors.auc(scores, labels) == pytest.approx(_old_auc(scores, labels), abs=1e-12)
  for fpr in (0.0, 0.01, 0.05, 0.1, 0.37, 1.0):
    got, want = detectors.recall_at_fpr(scores, labels, fpr), _old_recall_at_fpr(scores, labels, fpr)
    assert got == pytest.approx(want, abs=1e-12), (fpr, got, want)
  pos, neg = scores[labels], scores[~labels]
  assert _old_auc(scores, labels) == pytest.approx(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
  assert detectors.auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)  # ties count half
  # 10 negatives and 10 positives all tied -> FPR 0.1 flags a tenth of the positives.
  assert detectors.recall_at_fpr(np.ones(20), np.arange(20) < 10, 0.1) == pytest.approx(0.1)
  assert np.isnan(detectors.auc([0.3, 0.4], [1, 1]))


def _planted(n: int, seed: int, bot_share: float = 0.1):
  """Evidence of n users as api.user_evidence returns it, with planted bots of two kinds, each detectable in one
  direction of one column only: `regular` bots' gap NLL is far LOWER than people's, `indiscriminate` bots' ad
  NLL far HIGHER; both kinds' user vectors are shifted. People's statistics spread like 1 / sqrt(length).
  -> (evidence, is_bot [n])."""
  rng = np.random.default_rng(seed)
  length = rng.integers(2, 64, n)
  kind = np.where(rng.random(n) < bot_share, rng.integers(0, 2, n), -1)
  noise = lambda sd: rng.normal(0, sd, n) / np.sqrt(length / 16)  # noqa: E731
  ev = {"num_predicted": length - 1.0, "time_gap/nll_mean": 2.0 + noise(0.4) - 1.5 * (kind == 0),
        "ad_id/nll_mean": 6.0 + noise(0.8) + 3.0 * (kind == 1), "event_type/nll_mean": 1.2 + noise(0.3),
        "event_type/entropy": 1.3 + noise(0.2)}
  v = rng.normal(size=(n, 12))
  v[:, 0] += 4.0 * (kind >= 0)
  ev["vector/mean"] = ev["vector/last"] = v
  return ev, (kind >= 0).astype(float)


def test_anomaly_finds_planted_bots_of_both_directions_without_labels():
  ref, _ = _planted(4000, 0)
  target, y = _planted(4000, 1)
  scores = detectors.Unsupervised(ref).scores(target)
  for name, least in (("neighbors", 0.97), ("evidence", 0.95), ("vector", 0.85), ("isolation", 0.9)):
    assert detectors.auc(scores[name], y) > least, (name, detectors.auc(scores[name], y))
  assert detectors.recall_at_fpr(scores["neighbors"], y, 0.01) > 0.7  # measured 0.87
  assert detectors.auc(scores["evidence/event_type/entropy"], y) < 0.6  # a column without signal finds none


def _clustered(n: int, seed: int):
  """People in three populations of user vectors (60%, 24%, 12%), bots a fourth, small one (4%), all as spread
  as one another, at random centres 8 apart (one draw of the centres for every seed). Evidence carries no
  signal: only where the users lie tells bots from people."""
  centres = np.random.default_rng(99).normal(size=(4, 8))
  centres *= 8 / np.sqrt(2 * 8)  # E|c_i - c_j| ~ 8
  rng = np.random.default_rng(seed)
  group = rng.choice(4, n, p=[0.6, 0.24, 0.12, 0.04])  # 3 = bots
  v = rng.normal(size=(n, 8)) + centres[group]
  length = rng.integers(2, 64, n)
  ev = {"num_predicted": length - 1.0, "ad_id/nll_mean": 6.0 + rng.normal(0, 0.8, n) / np.sqrt(length / 16),
        "vector/mean": v, "vector/last": v}
  return ev, (group == 3).astype(float)


def test_neighbors_finds_a_small_population_among_several():
  """The headline's reason to be (gpt_ads.downstream.detectors, item 5): bots as a small group among several human
  populations of different sizes, found by the radius that holds 1% .. 20% of the users. Scoring the
  reference users themselves (self excluded) matches scoring fresh users."""
  (ref, _), (target, y) = _clustered(4000, 0), _clustered(4000, 1)
  unsup = detectors.Unsupervised(ref)
  scores = unsup.scores(target)
  recall = {k: detectors.recall_at_fpr(scores[k], y, 0.01) for k in unsup.SCORES}
  assert detectors.auc(scores["neighbors"], y) > 0.97  # measured 0.993
  assert recall["neighbors"] > 0.6, recall  # measured 0.75; the other scores 0.006 (evidence, vector), 0.17
  assert all(recall["neighbors"] > r + 0.4 for k, r in recall.items() if k != "neighbors"), recall
  own = unsup.scores(ref)["neighbors"]
  assert abs(np.median(own) - np.median(scores["neighbors"])) < 0.05 * np.std(scores["neighbors"])


def test_length_calibration_gives_unit_spread_in_every_bucket():
  ref, _ = _planted(4000, 0, bot_share=0.0)
  x = np.stack([ref["time_gap/nll_mean"]], 1)
  cal = detectors.LengthCalibrator(ref["num_predicted"], x)
  z, bucket = cal(ref["num_predicted"], x)[:, 0], cal.bucket(ref["num_predicted"])
  assert len(np.unique(bucket)) == detectors.LENGTH_BUCKETS
  spreads = [np.std(z[bucket == b]) for b in np.unique(bucket)]
  assert max(spreads) < 1.3 and min(spreads) > 0.75, spreads  # short and long users alike


def test_positive_unlabeled_and_supervised_probes_find_planted_bots():
  (train, y), (test, y_test) = _planted(4000, 0), _planted(4000, 1)
  unsup = detectors.Unsupervised(train)
  known = np.zeros_like(y)
  known[np.flatnonzero(y)[:20]] = 1  # 20 known positives; every other training user unlabeled
  pu = detectors.fit_labeled(unsup, known, positive_unlabeled=True)(test)
  full = detectors.fit_labeled(unsup, y, positive_unlabeled=False)(test)
  assert detectors.auc(pu, y_test) > 0.95 and detectors.auc(full, y_test) > 0.98


@pytest.fixture(scope="module")
def run_dir(trained_run):
  return trained_run


def _downstream(workdir, *args):
  return subprocess.run([sys.executable, "-m", "gpt_ads.cli.downstream", f"--workdir={workdir}",
                         f"--data_dir={workdir}/generated_data", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=subprocess_env())


@pytest.mark.parametrize("label,task,extra", [("converted", "probe", ()), ("is_bot", "anomaly", ()),
                                              ("is_bot", "finetune", ("--finetune_steps=5",)),
                                              ("is_bot", "probe", ("--labeled_positives=5",))])
def test_tasks_write_their_metrics(run_dir, label, task, extra):
  proc = _downstream(run_dir, f"--label={label}", f"--task={task}", *extra)
  assert proc.returncode == 0, proc.stderr[-3000:]
  name = f"{label}_{task}" + ("_pu5" if extra == ("--labeled_positives=5",) else "")
  result = json.load(open(os.path.join(run_dir, "downstream", f"{name}.json")))
  assert set(result) >= {"auc", "recall_at_fpr", "bayes", "bayes_fraction", "seconds", "by_length",
                         "excluded_no_prediction"}  # the fields scripts read
  assert set(result["recall_at_fpr"]) == {"0.01", "0.05"}
  assert result["num_test"] == 128 and result["positives_test"] > 0
  assert result["excluded_no_prediction"] == {"train": 0, "validation": 0, "test": 0}  # every user has 4+ events
  assert result["bayes"]["auc"] > 0.6  # the generator's posterior separates the classes
  assert np.isfinite(result["bayes_fraction"])
  assert sum(g["users"] for g in result["by_length"].values()) == 128
  if label == "is_bot":  # one entry per bot kind of the generator, each against every negative
    assert set(result["bayes_by_kind"]) <= {"regular", "indiscriminate", "clicker", "mimic"}
    assert all(g["users"] - g["positives"] == 128 - result["positives_test"] for g in result["bayes_by_kind"].values())
  if task == "anomaly":
    assert {"evidence", "vector", "isolation", "neighbors", "evidence/ad_id/nll_mean"} <= set(result["per_score"])
    assert result["headline"] == "neighbors" and result["auc"] == result["per_score"]["neighbors"]["auc"]
  if extra == ("--labeled_positives=5",):
    assert result["labeled_positives"] == 5 and result["unlabeled"] == result["num_train"] - 5


def test_bad_input_is_one_line(run_dir):
  for args, message in ((("--label=segment", "--task=probe"), "is not binary"),
                        (("--label=nope", "--task=probe"), "has labels"),
                        (("--label=device", "--task=anomaly"), "leakage"),  # an input feature of the run
                        (("--label=is_bot", "--task=probe", "--labeled_positives=100000"), "only"),
                        (("--label=is_bot", "--task=anomaly", "--labeled_positives=5"), "needs --task=probe")):
    proc = _downstream(run_dir, *args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gpt-ads-downstream: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], (args, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr


def test_labels_with_one_class_are_refused():
  ok = {"train": np.array([0.0, 1.0, 0.0]), "validation": np.array([0.0]), "test": np.array([1.0, 0.0])}
  downstream.check_labels("x", ok, labeled_positives=1)
  with pytest.raises(ValueError, match="one class only among the 2 test users"):
    downstream.check_labels("x", {**ok, "test": np.array([0.0, 0.0])}, labeled_positives=0)
  with pytest.raises(ValueError, match="no train user"):
    downstream.check_labels("x", {**ok, "train": np.zeros(0)}, labeled_positives=0)
  with pytest.raises(ValueError, match="only 1 positives"):
    downstream.check_labels("x", ok, labeled_positives=2)


def test_too_few_reference_users_is_one_clear_error():
  ref, _ = _planted(12, 0)  # 4 evidence columns + 11 vector components
  with pytest.raises(ValueError, match="need at least .* unlabeled reference"):
    detectors.Unsupervised(ref)

"""Tests for gpt_ads.scaling (synthetic data, no training)."""

import csv
import json
import os

import numpy as np
import pytest

from gpt_ads import scaling

ALPHA, N_C = 0.076, 8.8e13
N = np.geomspace(1e4, 1e7, 8)


def _loss(n, l_inf=0.0, noise=0.002, seed=0):
  rng = np.random.default_rng(seed)
  return ((N_C / n) ** ALPHA + l_inf) * np.exp(noise * rng.standard_normal(len(n)))


def test_fit_recovers_law():
  fit = scaling.fit_power_law(N, _loss(N))
  assert fit["alpha"] == pytest.approx(ALPHA, rel=0.02)
  assert fit["n_c"] == pytest.approx(N_C, rel=0.1)
  assert fit["l_inf"] == 0.0


def test_fit_with_floor_recovers_l_inf():
  alpha, n_c, l_inf = 0.3, 1e5, 1.5
  n = np.geomspace(1e3, 1e8, 12)
  loss = (n_c / n) ** alpha + l_inf
  fit = scaling.fit_power_law(n, loss * np.exp(0.0005 * np.random.default_rng(1).standard_normal(len(n))),
                              with_floor=True)
  assert fit["l_inf"] == pytest.approx(l_inf, rel=0.05)
  assert fit["alpha"] == pytest.approx(alpha, rel=0.1)


def test_bootstrap_ci_contains_true_alpha():
  boot = scaling.bootstrap(N, _loss(N, noise=0.01), samples=300, extrapolate=(1e8, 1e9))
  lo, hi = boot["alpha_ci"]
  assert lo <= ALPHA <= hi
  assert boot["samples"] > 200
  med, elo, ehi = boot["extrapolated"][1e8]
  assert elo <= (N_C / 1e8) ** ALPHA <= ehi and elo <= med <= ehi


def test_bootstrap_skips_degenerate():
  boot = scaling.bootstrap([1e4, 1e4, 1e5], [3.0, 3.1, 2.5], samples=50)
  assert boot["samples"] == 0 and np.isnan(boot["alpha_ci"][0])


def test_frontier():
  rows = [{"name": "a", "train_flops": 1e10, "test_loss": 3.0},
          {"name": "b", "train_flops": 2e10, "test_loss": 3.2},  # more compute, worse: off the frontier
          {"name": "c", "train_flops": 4e10, "test_loss": 2.5},
          {"name": "d", "train_flops": 4e10, "test_loss": 2.7},
          {"name": "e", "train_flops": 8e10, "test_loss": ""},  # missing loss: ignored
          {"name": "f", "train_flops": 1.6e11, "test_loss": 2.0}]
  assert scaling.frontier(rows) == [(1e10, 3.0, "a"), (4e10, 2.5, "c"), (1.6e11, 2.0, "f")]


def _write_sweep(tmp_path, sizes, bayes=True):
  cols = ["name", "config", "arg", "overrides", "test_loss", "gap_closed", "non_embedding_params", "params",
          "train_flops", "flops_per_position", "events_per_sec", "step", "bayes_factorized_loss", "unigram_loss"]
  with open(tmp_path / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    for i, n in enumerate(sizes):
      name = f"run{i}"
      loss = 1.0 + (1e5 / n) ** 0.3
      w.writerow({"name": name, "config": "configs/synthetic.py", "arg": f"size{i}",
                  "overrides": json.dumps({"train.batch_size": 32}), "test_loss": loss, "gap_closed": 0.5,
                  "non_embedding_params": n, "params": n + 5000, "train_flops": 6 * n * 1e5,
                  "flops_per_position": 6 * n, "events_per_sec": 1000.0, "step": 100,
                  "bayes_factorized_loss": 1.0 if bayes else "", "unigram_loss": 5.0})
      os.makedirs(tmp_path / "runs" / name)
      with open(tmp_path / "runs" / name / "metrics.jsonl", "w") as m:
        for step in (10, 50, 100):
          m.write(json.dumps({"step": step, "train/loss": loss + 1.0 / step, "eval/loss": loss + 2.0 / step}) + "\n")


def test_report(tmp_path):
  _write_sweep(tmp_path, [1e3, 3e3, 1e4, 3e4, 1e5])
  path = scaling.report(str(tmp_path))
  assert path == str(tmp_path / "REPORT.md")
  text = open(path).read()
  assert "α" in text and "Excess loss" in text and "frontier" in text and "run4" in text
  for name in ("fit.json", "loss_vs_params.png", "learning_curves.png"):
    assert (tmp_path / name).stat().st_size > 0
  fit = json.load(open(tmp_path / "fit.json"))
  assert fit["excess_loss"]["alpha"] == pytest.approx(0.3, rel=0.02)
  assert len(fit["frontier"]) == 5
  assert len(fit["data"]) == 5 and "L(D)" in text
  assert fit["data"][0]["alpha_d"] == pytest.approx(1.0, rel=0.02)  # eval/loss = L + 64 / (32 step)


def test_report_too_few_sizes(tmp_path):
  _write_sweep(tmp_path, [1e3, 1e3], bayes=False)
  text = open(scaling.report(str(tmp_path))).read()
  assert "Not fitted" in text
  assert (tmp_path / "loss_vs_params.png").exists()

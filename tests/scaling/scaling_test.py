"""Tests for gpt_ads.scaling.fits (synthetic data, no training)."""

import csv
import json
import os

import numpy as np
import pytest

from gpt_ads.scaling import fits as scaling, report as sweep_report

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


def test_r_squared_and_data_to_reach():
  fit = scaling.fit_power_law(N, _loss(N, noise=0.0))
  assert scaling.r_squared(N, _loss(N, noise=0.0), fit) == pytest.approx(1.0, abs=1e-9)
  assert scaling.r_squared(N, _loss(N, noise=0.05, seed=3), fit) < 0.99
  d, loss = [1e3, 1e4, 1e5], [3.0, 2.0, 1.0]
  assert scaling.data_to_reach(d, loss, 1.5) == pytest.approx(10 ** 4.5)
  assert scaling.data_to_reach(d, loss, 3.5) == 1e3 and scaling.data_to_reach(d, loss, 0.5) is None


COLUMNS = ["name", "config", "arg", "overrides", "flops_budget", "backbone", "d_model", "num_layers", "batch_size",
           "num_train_users", "test_loss", "gap_closed", "non_embedding_params", "params", "train_flops",
           "flops_per_position", "events_per_sec", "step", "bayes_factorized_loss", "unigram_loss", "devices",
           "train_seconds"]


def _row(name, n, *, backbone="transformer", users=1000, budget="", alpha=0.3, bayes=True, steps=100):
  loss = 1.0 + (1e5 / n) ** alpha * (1.0 + 100.0 / users)
  return {"name": name, "config": "configs/default.py", "arg": "", "overrides": "{}", "flops_budget": budget,
          "backbone": backbone, "batch_size": 32, "num_train_users": users, "test_loss": loss, "gap_closed": 0.5,
          "non_embedding_params": n, "params": n + 5000, "train_flops": 6 * n * 32 * steps,
          "flops_per_position": 6 * n, "step": steps, "bayes_factorized_loss": 1.0 if bayes else "",
          "unigram_loss": 5.0, "devices": 1, "train_seconds": 10.0}


def _write_sweep(tmp_path, rows):
  with open(tmp_path / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow(r)
      os.makedirs(tmp_path / "runs" / r["name"], exist_ok=True)
      with open(tmp_path / "runs" / r["name"] / "metrics.jsonl", "w") as m:
        for step in (10, 50, 100):
          m.write(json.dumps({"step": step, "train/loss": r["test_loss"] + 1.0 / step,
                              "eval/loss": r["test_loss"] + 2.0 / step}) + "\n")


def test_report(tmp_path):
  sizes = [1e3, 3e3, 1e4, 3e4, 1e5, 3e5]
  rows = [_row(f"t{i}", n) for i, n in enumerate(sizes)]
  rows += [_row(f"lstm{i}", n, backbone="lstm", alpha=0.1) for i, n in enumerate(sizes[:4])]
  rows += [_row(f"t{i}_u{u}", n, users=u) for i, n in enumerate(sizes[:2]) for u in (100, 300)]  # data sweep
  rows += [_row(f"b{i}", n, budget=1e12, steps=int(1e12 / (6 * n * 32))) for i, n in enumerate(sizes[:3])]
  _write_sweep(tmp_path, rows)
  for i, aucs in enumerate([0.6, 0.66, 0.72]):  # downstream results of three ladder runs
    os.makedirs(tmp_path / "runs" / f"t{i}" / "downstream")
    with open(tmp_path / "runs" / f"t{i}" / "downstream" / "converted_probe.json", "w") as f:
      json.dump({"auc": aucs, "recall_at_fpr": {"0.01": 0.1 * (i + 1), "0.05": 0.3},
                 "bayes": {"auc": 0.8, "recall_at_fpr": {"0.01": 0.5, "0.05": 0.7}}}, f)
  path = sweep_report.report(str(tmp_path), title="Test sweep")
  assert path == str(tmp_path / "REPORT.md")
  text = open(path).read()
  assert text.startswith("# Test sweep") and "R²" in text and "Loss vs data" in text and "Fixed compute" in text
  assert "★" in text and "frontier" in text
  assert "Table 5" in text and "0.7200 (+20.0%)" in text and "0.3000 (+200.0%)" in text and "Bayes-optimal" in text
  for name in ("fit.json", "loss_vs_params.png", "loss_vs_data.png", "loss_vs_flops.png", "learning_curves.png"):
    assert (tmp_path / name).stat().st_size > 0
  fit = json.load(open(tmp_path / "fit.json"))
  by_backbone = {g["backbone"]: g for g in fit["size_fits"] if g["num_train_users"] == 1000}
  assert by_backbone["transformer"]["excess_loss"]["alpha"] == pytest.approx(0.3, rel=0.02)
  assert by_backbone["transformer"]["excess_loss"]["r2"] > 0.999
  assert by_backbone["lstm"]["excess_loss"]["alpha"] == pytest.approx(0.1, rel=0.02)
  assert len(fit["data"]) == 2  # the two models trained on 100 / 300 / 1000 users
  small, large = sorted(fit["data"].values(), key=lambda d: d["non_embedding_params"])
  assert large["users_to_target"] < small["users_to_target"]  # the larger model needs less data
  assert fit["compute"][0]["best"] == "b2"
  assert fit["curves"][0]["alpha_d"] == pytest.approx(1.0, rel=0.02)  # eval/loss = L + 64 / (32 step)


def test_report_too_few_sizes(tmp_path):
  _write_sweep(tmp_path, [_row("a", 1e3, bayes=False), _row("b", 1e3, bayes=False)])
  text = open(sweep_report.report(str(tmp_path))).read()
  assert "Not fitted" in text
  assert (tmp_path / "loss_vs_params.png").exists()

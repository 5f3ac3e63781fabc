"""Scaling-law fits and the sweep report (numpy / scipy / matplotlib).

`fit_power_law` fits L(N) = (N_c / N)^alpha (optionally + L_inf) in log space; `bootstrap` resamples the runs
for confidence intervals on alpha and on the losses extrapolated to larger N; `frontier` is the
compute-efficient frontier; `report(workdir)` reads `DIR/results.csv` (+ `runs/<name>/metrics.jsonl`) and
writes `DIR/REPORT.md`, `DIR/fit.json`, `DIR/loss_vs_params.png` and `DIR/learning_curves.png`.
"""

import csv
import json
import math
import os

import numpy as np
from scipy import optimize


def _law(n, alpha, n_c, l_inf=0.0):
  """(n_c / n)^alpha + l_inf."""
  return (n_c / np.asarray(n, float)) ** alpha + l_inf


def fit_power_law(n, loss, *, with_floor: bool = False) -> dict:
  """Least-squares fit of log L = log((N_c / N)^alpha + L_inf); returns {"alpha", "n_c", "l_inf"}.

  alpha > 0 for a loss that decreases with N; l_inf is 0.0 without `with_floor` (constrained to
  [0, min(loss)) with it)."""
  n, loss = np.asarray(n, float), np.asarray(loss, float)
  if len(n) < 2 or np.any(n <= 0) or np.any(loss <= 0):
    raise ValueError("need >= 2 points with positive N and loss")
  ln, ll = np.log(n), np.log(loss)
  slope, icpt = np.polyfit(ln, ll, 1)  # log L = -alpha log N + alpha log N_c
  alpha0 = max(-slope, 1e-3)
  logc0 = icpt / alpha0
  if not with_floor:
    def res(p):
      return p[0] * (p[1] - ln) - ll
    sol = optimize.least_squares(res, [alpha0, logc0], method="lm")
    return {"alpha": float(sol.x[0]), "n_c": float(np.exp(min(sol.x[1], 700.0))), "l_inf": 0.0}
  lmin = float(loss.min())

  def res_f(p):
    a, logc, frac = p
    return np.log(np.exp(a * (logc - ln)) + frac * lmin) - ll

  best = None
  for frac0 in (0.0, 0.3, 0.6, 0.9):  # several starts: the floor makes the problem non-convex
    x0 = [alpha0, logc0, frac0]
    if frac0:  # start the power part on the loss above the guessed floor
      excess = loss - frac0 * lmin
      s, c = np.polyfit(ln, np.log(excess), 1)
      x0 = [max(-s, 1e-3), c / max(-s, 1e-3), frac0]
    try:
      sol = optimize.least_squares(res_f, x0, bounds=([1e-6, -np.inf, 0.0], [np.inf, np.inf, 1 - 1e-9]))
    except ValueError:
      continue
    if best is None or sol.cost < best.cost:
      best = sol
  if best is None:
    raise RuntimeError("power-law fit with floor failed")
  a, logc, frac = best.x
  return {"alpha": float(a), "n_c": float(np.exp(min(logc, 700.0))), "l_inf": float(frac * lmin)}


def bootstrap(n, loss, *, with_floor: bool = False, samples: int = 1000, seed: int = 0,
              extrapolate=(1e7, 1e8)) -> dict:
  """Bootstrap (runs resampled with replacement) 95% intervals: {"alpha_ci": (lo, hi), "extrapolated":
  {N: (median, lo, hi)}, "samples": the number of usable resamples}. Resamples with < 3 distinct N, or whose
  fit fails, are skipped."""
  n, loss = np.asarray(n, float), np.asarray(loss, float)
  rng = np.random.default_rng(seed)
  alphas, preds = [], []
  for _ in range(samples):
    idx = rng.integers(0, len(n), len(n))
    if len(np.unique(n[idx])) < 3:
      continue
    try:
      fit = fit_power_law(n[idx], loss[idx], with_floor=with_floor)
    except (ValueError, RuntimeError, TypeError):
      continue
    if not all(np.isfinite(v) for v in fit.values()):
      continue
    alphas.append(fit["alpha"])
    preds.append([_law(x, fit["alpha"], fit["n_c"], fit["l_inf"]) for x in extrapolate])
  if not alphas:
    nan = float("nan")
    return {"alpha_ci": (nan, nan), "extrapolated": {float(x): (nan, nan, nan) for x in extrapolate},
            "samples": 0}
  alphas, preds = np.array(alphas), np.array(preds)
  lo, hi = np.percentile(alphas, [2.5, 97.5])
  ext = {float(x): tuple(float(v) for v in np.percentile(preds[:, i], [50, 2.5, 97.5]))
         for i, x in enumerate(extrapolate)}
  return {"alpha_ci": (float(lo), float(hi)), "extrapolated": ext, "samples": len(alphas)}


def frontier(rows) -> list[tuple]:
  """Compute-efficient frontier: sorted (train_flops, test_loss, name) of the runs that reach a lower test loss
  than every run with less (or equal) compute. `rows` are dicts with train_flops, test_loss, name."""
  pts = []
  for r in rows:
    f, l = _num(r.get("train_flops")), _num(r.get("test_loss"))
    if f is not None and l is not None:
      pts.append((f, l, r.get("name", "")))
  out, best = [], math.inf
  for f, l, name in sorted(pts, key=lambda p: (p[0], p[1])):
    if l < best:
      out.append((f, l, name))
      best = l
  return out


def _num(v):
  """float(v), or None for empty / missing / non-finite values."""
  try:
    x = float(v)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def _read_jsonl(path) -> list[dict]:
  """The JSON lines of `path` ([] if missing; bad lines skipped)."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except ValueError:
        pass
  return out


def _fmt(x, spec=".4g"):
  """A table cell: '-' for None."""
  return "-" if x is None else format(x, spec)


def _fit_section(label, n, y, with_floor, largest):
  """The fit, its bootstrap and markdown lines for one target (y vs n); None if < 3 distinct N."""
  if len(np.unique(n)) < 3:
    return None, [f"### {label}", "", f"Not fitted: needs >= 3 runs with distinct N (have {len(np.unique(n))}).",
                  ""]
  fit = fit_power_law(n, y, with_floor=with_floor)
  boot = bootstrap(n, y, with_floor=with_floor, extrapolate=(10 * largest, 100 * largest))
  lo, hi = boot["alpha_ci"]
  law = f"L(N) = (N_c / N)^α{' + L_∞' if with_floor else ''}"
  lines = [f"### {label}", "", f"{law}: α = {fit['alpha']:.4f} (95% bootstrap CI {lo:.4f} – {hi:.4f}, "
           f"{boot['samples']} resamples), N_c = {fit['n_c']:.4g}" +
           (f", L_∞ = {fit['l_inf']:.4f}" if with_floor else "") + ".", "",
           "| N (non-embedding) | predicted loss | 95% CI |", "|---|---|---|"]
  for (x, (med, elo, ehi)), k in zip(boot["extrapolated"].items(), ("10×", "100×")):
    pred = float(_law(x, fit["alpha"], fit["n_c"], fit["l_inf"]))
    lines.append(f"| {x:.3g} ({k} largest) | {pred:.4f} (median {med:.4f}) | {elo:.4f} – {ehi:.4f} |")
  boot["extrapolated"] = {str(k): v for k, v in boot["extrapolated"].items()}
  return {**fit, **boot, "with_floor": with_floor}, lines + [""]


def _data_fits(workdir, rows) -> list[dict]:
  """L(D) per model size: (D_c / D)^alpha_D + L_inf fitted to each run's eval/loss (train/loss if no eval points)
  against D = examples seen (step x batch size when the overrides give it, else steps)."""
  out = []
  for r in rows:
    recs = _read_jsonl(os.path.join(workdir, "runs", r["name"], "metrics.jsonl"))
    key = "eval/loss" if sum("eval/loss" in x for x in recs) >= 3 else "train/loss"
    pts = [(x["step"], x[key]) for x in recs if key in x and x.get("step", 0) > 0 and x[key] > 0]
    if len({s for s, _ in pts}) < 3:
      continue
    try:
      batch = float(json.loads(r.get("overrides") or "{}").get("train.batch_size", 1))
    except (ValueError, AttributeError):
      batch = 1.0
    try:
      fit = fit_power_law([s * batch for s, _ in pts], [v for _, v in pts], with_floor=True)
    except (ValueError, RuntimeError):
      continue
    out.append({"name": r["name"], "non_embedding_params": _num(r.get("non_embedding_params")), "metric": key,
                "unit": "examples" if batch != 1.0 else "steps", "alpha_d": fit["alpha"], "d_c": fit["n_c"],
                "l_inf": fit["l_inf"]})
  return out


def _plots(workdir, n, loss, fit, with_floor, names):
  """loss_vs_params.png (points, fit, bootstrap band) and learning_curves.png."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.loglog(n, loss, "o", label="runs")
  if fit is not None:
    grid = np.geomspace(n.min() / 2, n.max() * 100, 100)
    rng = np.random.default_rng(0)
    curves = []
    for _ in range(300):
      idx = rng.integers(0, len(n), len(n))
      if len(np.unique(n[idx])) < 3:
        continue
      try:
        f = fit_power_law(n[idx], loss[idx], with_floor=with_floor)
      except (ValueError, RuntimeError):
        continue
      curves.append(_law(grid, f["alpha"], f["n_c"], f["l_inf"]))
    if curves:
      lo, hi = np.percentile(np.array(curves), [2.5, 97.5], axis=0)
      ax.fill_between(grid, lo, hi, alpha=0.25, label="95% bootstrap")
    ax.loglog(grid, _law(grid, fit["alpha"], fit["n_c"], fit["l_inf"]), "-", label=f"fit α={fit['alpha']:.3f}")
  ax.set_xlabel("non-embedding parameters N")
  ax.set_ylabel("test loss")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "loss_vs_params.png"), dpi=100)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for name in names:
    recs = [r for r in _read_jsonl(os.path.join(workdir, "runs", name, "metrics.jsonl")) if "train/loss" in r]
    if recs:
      ax.plot([r["step"] for r in recs], [r["train/loss"] for r in recs], label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("train/loss")
  if ax.lines:
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "learning_curves.png"), dpi=100)
  plt.close(fig)


def report(workdir: str, *, with_floor: bool = False) -> str:
  """Writes DIR/REPORT.md, DIR/fit.json, DIR/loss_vs_params.png, DIR/learning_curves.png from DIR/results.csv;
  returns the REPORT.md path."""
  with open(os.path.join(workdir, "results.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  lines = ["# Scaling report", "", "| run | non-embedding params | params | devices | wall s / train FLOPs | "
           "batch size | steps | test loss | gap closed |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ev = {}
    ev_path = os.path.join(workdir, "runs", r["name"], "eval.json")
    if os.path.exists(ev_path):
      with open(ev_path) as f:
        ev = json.load(f)
    try:
      over = json.loads(r.get("overrides") or "{}")
    except ValueError:
      over = {}
    wall = _num(ev.get("wall_seconds", ev.get("train_seconds")))
    devices = ev.get("num_devices", ev.get("devices", 1))
    batch = over.get("train.batch_size", "-")
    flops = _num(r.get("train_flops"))
    wall_cell = f"{_fmt(wall, '.0f')} s / {_fmt(flops, '.3g')}" if wall is not None else _fmt(flops, ".3g")
    step = _num(r.get("step"))
    lines.append(f"| {r['name']} | {_fmt(_num(r.get('non_embedding_params')), ',.0f')} | "
                 f"{_fmt(_num(r.get('params')), ',.0f')} | {devices} | {wall_cell} | {batch} | "
                 f"{_fmt(step, '.0f')} | {_fmt(_num(r.get('test_loss')))} | {_fmt(_num(r.get('gap_closed')), '.3f')} |")
  lines += ["", "## Fits", ""]
  usable = [r for r in rows if _num(r.get("non_embedding_params")) and _num(r.get("test_loss"))]
  n = np.array([_num(r["non_embedding_params"]) for r in usable])
  loss = np.array([_num(r["test_loss"]) for r in usable])
  largest = float(n.max()) if len(n) else 1.0
  out = {"runs": len(rows)}
  fit, sec = _fit_section("Test loss vs non-embedding parameters", n, loss, with_floor, largest)
  out["test_loss"] = fit
  lines += sec
  bayes = [(_num(r["non_embedding_params"]), _num(r["test_loss"]) - _num(r.get("bayes_factorized_loss")))
           for r in usable if _num(r.get("bayes_factorized_loss")) is not None]
  bayes = [(x, y) for x, y in bayes if y > 0]
  if bayes:
    bn, by = np.array([b[0] for b in bayes]), np.array([b[1] for b in bayes])
    efit, sec = _fit_section("Excess loss over the Bayes bound (test − bayes_factorized)", bn, by, False,
                             largest)
    out["excess_loss"] = efit
    lines += sec
  data_fits = _data_fits(workdir, rows)
  out["data"] = data_fits
  if data_fits:
    lines += ["### L(D) per model size", "", "L(D) = (D_c / D)^α_D + L_∞ on each run's learning curve.", "",
              "| run | N | curve | D unit | α_D | D_c | L_∞ |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {d['name']} | {_fmt(d['non_embedding_params'], ',.0f')} | {d['metric']} | {d['unit']} | "
              f"{d['alpha_d']:.4f} | {d['d_c']:.4g} | {d['l_inf']:.4f} |" for d in sorted(
                  data_fits, key=lambda d: d["non_embedding_params"] or 0)]
    lines.append("")
  front = frontier(rows)
  out["frontier"] = [{"train_flops": f, "test_loss": l, "name": nm} for f, l, nm in front]
  lines += ["## Compute-efficient frontier", "", "| train FLOPs | test loss | run |", "|---|---|---|"]
  lines += [f"| {f:.3g} | {l:.4f} | {nm} |" for f, l, nm in front]
  lines += ["", "![loss vs parameters](loss_vs_params.png)", "", "![learning curves](learning_curves.png)", ""]
  order = np.argsort(n) if len(n) else []
  _plots(workdir, n[order] if len(n) else n, loss[order] if len(n) else loss, fit, with_floor,
         [r["name"] for r in rows])
  with open(os.path.join(workdir, "fit.json"), "w") as f:
    json.dump(out, f, indent=2, default=float)
  path = os.path.join(workdir, "REPORT.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path

"""Scaling-law fits (numpy / scipy): the numbers behind a sweep's REPORT.md (gpt_ads.scaling.report).

`fit_power_law` fits L(N) = (N_c / N)^alpha (optionally + L_inf) in log space and `r_squared` scores it there;
`bootstrap` resamples the runs for confidence intervals on alpha and on the losses extrapolated to larger N;
`frontier` is the compute-efficient frontier; `data_to_reach` interpolates how much data a model needs to reach
a target loss.
"""

import math

import numpy as np
from scipy import optimize


def power_law(n, alpha, n_c, l_inf=0.0):
  """(n_c / n)^alpha + l_inf."""
  return (n_c / np.asarray(n, float)) ** alpha + l_inf


def r_squared(n, loss, fit: dict) -> float:
  """R² of the fit in log space (the space it is fitted in): 1 - SS_res / SS_tot of log L."""
  ll = np.log(np.asarray(loss, float))
  pred = np.log(power_law(n, fit["alpha"], fit["n_c"], fit["l_inf"]))
  ss_tot = float(np.sum((ll - ll.mean()) ** 2))
  return 1.0 - float(np.sum((ll - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def fit_power_law(n, loss, *, with_floor: bool = False) -> dict:
  """Least-squares fit of log L = log((N_c / N)^alpha + L_inf); returns {"alpha", "n_c", "l_inf"}.

  alpha > 0 for a loss that decreases with N; l_inf is 0.0 without `with_floor` (constrained to
  [0, min(loss)) with it). `r_squared` scores the fit."""
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
    preds.append([power_law(x, fit["alpha"], fit["n_c"], fit["l_inf"]) for x in extrapolate])
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
    f, l = finite_or_none(r.get("train_flops")), finite_or_none(r.get("test_loss"))
    if f is not None and l is not None:
      pts.append((f, l, r.get("name", "")))
  out, best = [], math.inf
  for f, l, name in sorted(pts, key=lambda p: (p[0], p[1])):
    if l < best:
      out.append((f, l, name))
      best = l
  return out


def finite_or_none(v):
  """float(v), or None for empty / missing / non-finite values."""
  try:
    x = float(v)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def data_to_reach(d, loss, target: float) -> float | None:
  """The data size at which loss(d) (piecewise linear in log d, points sorted by d) first reaches `target`:
  None if it never does; d.min() if the smallest size already does."""
  order = np.argsort(np.asarray(d, float))
  d, loss = np.asarray(d, float)[order], np.asarray(loss, float)[order]
  if loss[0] <= target:
    return float(d[0])
  for i in range(1, len(d)):
    if loss[i] <= target:
      frac = (loss[i - 1] - target) / (loss[i - 1] - loss[i])
      return float(np.exp(np.log(d[i - 1]) + frac * (np.log(d[i]) - np.log(d[i - 1]))))
  return None

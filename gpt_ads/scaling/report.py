"""A sweep's REPORT.md and plots, from `DIR/results.csv` and each run's `runs/<name>/metrics.jsonl`.

Sections, each written only when the sweep has the runs for it (shaped like the study's tables):
  runs            one row per run: backbone, parameters, devices, wall time, FLOPs, batch, steps, users, loss;
  loss vs size    L(N) = (N_c / N)^alpha per group of runs that differ only in size (same backbone, data and
                  recipe), on test loss and — generated data — on the excess over the Bayes bound: alpha, its
                  bootstrap interval, R², and extrapolations to 10x / 100x the largest model. Groups per
                  backbone (and event factorization: "transformer (chain)") give the slopes side by side;
  loss vs data    test loss per model and training-set size, and the data each model needs to reach a common
                  target loss; L(D) fitted to every run's learning curve;
  fixed compute   per FLOPs budget, the runs that trade model size against steps, best marked;
  frontier        the compute-efficient frontier over all runs;
  downstream      for runs with gpt-ads-downstream results (runs/<name>/downstream/*.json), AUC and recall at
                  1% FPR per model size and their lift over the group's smallest model (the study's Table 5).
Files: REPORT.md, fit.json (every number of the report), loss_vs_params.png, loss_vs_data.png,
loss_vs_flops.png, learning_curves.png.
"""

import collections
import csv
import json
import os

import numpy as np

from gpt_ads.scaling import fits as scaling
from gpt_ads.scaling.fits import finite_or_none as _num
from gpt_ads.training import workdir as workdir_lib


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


def _label(key) -> str:
  backbone, users, budget = key
  parts = [backbone or "transformer"]
  if users is not None:
    parts.append(f"{users:,.0f} users")
  if budget is not None:
    parts.append(f"budget {budget:.3g} FLOPs")
  return ", ".join(parts)


def _rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "results.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    r["_n"] = _num(r.get("non_embedding_params"))
    r["_loss"] = _num(r.get("test_loss"))
    r["_bayes"] = _num(r.get("bayes_factorized_loss"))
    r["_users"] = _num(r.get("max_train_users")) or _num(r.get("num_train_users"))  # prepared data: max_train_users
    r["_budget"] = _num(r.get("flops_budget"))
    kind = r.get("backbone") or "transformer"  # runs of another backbone or factorization are fitted apart
    if r.get("event_factorization") == "chain":
      kind += " (chain)"
    r["_key"] = (kind, r["_users"], r["_budget"])
  return rows


def _fit(n, y, largest, with_floor):
  """fit + bootstrap + R² of y vs n, or None with < 3 distinct n."""
  n, y = np.asarray(n, float), np.asarray(y, float)
  if len(np.unique(n)) < 3:
    return None
  fit = scaling.fit_power_law(n, y, with_floor=with_floor)
  boot = scaling.bootstrap(n, y, with_floor=with_floor, extrapolate=(10 * largest, 100 * largest))
  boot["extrapolated"] = {str(k): v for k, v in boot["extrapolated"].items()}
  return {**fit, **boot, "r2": scaling.r_squared(n, y, fit), "with_floor": with_floor, "runs": len(n),
          "n_min": float(n.min()), "n_max": float(n.max())}


def _size_fits(rows, with_floor):
  """{group key: {"test_loss": fit, "excess_loss": fit or None}} for groups with >= 3 sizes."""
  groups = collections.defaultdict(list)
  for r in rows:
    if r["_n"] and r["_loss"] and r["_budget"] is None:
      groups[r["_key"]].append(r)
  out = {}
  for key, rs in groups.items():
    n = np.array([r["_n"] for r in rs])
    largest = float(n.max())
    fit = _fit(n, [r["_loss"] for r in rs], largest, with_floor)
    if fit is None:
      continue
    ex = [(r["_n"], r["_loss"] - r["_bayes"]) for r in rs if r["_bayes"] is not None and r["_loss"] > r["_bayes"]]
    efit = _fit([e[0] for e in ex], [e[1] for e in ex], largest, False) if ex else None
    out[key] = {"test_loss": fit, "excess_loss": efit, "runs": [r["name"] for r in rs]}
  return out


def _size_section(fits) -> list[str]:
  lines = ["## Loss vs model size", ""]
  if not fits:
    return lines + ["Not fitted: needs >= 3 runs with distinct N that differ only in size.", ""]
  lines += ["L(N) = (N_c / N)^α on test loss, and on the excess over the Bayes bound (generated data). "
            "Intervals: 95% bootstrap over runs.", "",
            "| runs | sizes | N range | α (test loss) | 95% CI | R² | α (excess) | 95% CI | R² |",
            "|---|---|---|---|---|---|---|---|---|"]
  for key, f in fits.items():
    t, e = f["test_loss"], f["excess_loss"]
    def ci(fit):  # resampling 3 runs only ever refits the same 3 distinct points: no interval
      return f"{fit['alpha_ci'][0]:.4f} – {fit['alpha_ci'][1]:.4f}" if fit["runs"] >= 4 else "- (< 4 sizes)"
    cells = [_label(key), str(t["runs"]), f"{t['n_min']:.3g} – {t['n_max']:.3g}", f"{t['alpha']:.4f}", ci(t),
             f"{t['r2']:.3f}"]
    cells += [f"{e['alpha']:.4f}", ci(e), f"{e['r2']:.3f}"] if e else ["-", "-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Extrapolations (fit / bootstrap median and 95% interval):", "",
            "| runs | target | N | predicted | median | 95% CI |", "|---|---|---|---|---|---|"]
  for key, f in fits.items():
    for what in ("test_loss", "excess_loss"):
      fit = f[what]
      if not fit:
        continue
      for x, (med, lo, hi) in fit["extrapolated"].items():
        pred = float(scaling.power_law(float(x), fit["alpha"], fit["n_c"], fit["l_inf"]))
        if fit["runs"] < 4:
          med, lo, hi = pred, float("nan"), float("nan")
        lines.append(f"| {_label(key)} | {what.replace('_', ' ')} | {float(x):.3g} | {pred:.4f} | {med:.4f} | "
                     f"{lo:.4f} – {hi:.4f} |")
  return lines + [""]


def _data_section(rows):
  """Loss per (model, training users) and the users each model needs to reach a common target."""
  models = collections.defaultdict(list)
  for r in rows:
    if r["_n"] and r["_loss"] and r["_users"]:
      models[(r["_key"][0], r["_n"], r["_budget"])].append(r)
  models = {k: sorted(v, key=lambda r: r["_users"]) for k, v in models.items() if len({r["_users"] for r in v}) >= 2}
  if not models:
    return [], {}
  users = sorted({r["_users"] for rs in models.values() for r in rs})
  target = max(min(r["_loss"] for r in rs) for rs in models.values())
  lines = ["## Loss vs data", "", "Test loss per model and number of training users; the last column is the "
           f"users a model needs to reach test loss {target:.4f} (the worst model's best; interpolated in "
           "log users).", "", "| model | N | " + " | ".join(f"{u:,.0f}" for u in users) + " | users to target |",
           "|---|---|" + "---|" * len(users) + "---|"]
  out = {}
  for key in sorted(models, key=lambda k: (k[0], k[1])):
    rs = models[key]
    by_users = {r["_users"]: r["_loss"] for r in rs}
    need = scaling.data_to_reach([r["_users"] for r in rs], [r["_loss"] for r in rs], target)
    name = f"{key[0]} {rs[-1]['name']}"
    lines.append(f"| {name} | {key[1]:,.0f} | " + " | ".join(_fmt(by_users.get(u)) for u in users) +
                 f" | {_fmt(need, ',.0f')} |")
    out[name] = {"non_embedding_params": key[1], "users": [r["_users"] for r in rs],
                 "test_loss": [r["_loss"] for r in rs], "users_to_target": need, "target": target}
  return lines + [""], out


def _curve_fits(workdir, rows) -> list[dict]:
  """L(D) = (D_c / D)^alpha_D + L_inf on each run's learning curve (eval/loss when it has >= 3 points, else
  train/loss) against D = events of training seen (step x batch size)."""
  out = []
  for r in rows:
    recs = _read_jsonl(workdir_lib.metrics_file(os.path.join(workdir, "runs", r["name"])))
    key = "eval/loss" if sum("eval/loss" in x for x in recs) >= 3 else "train/loss"
    pts = [(x["step"], x[key]) for x in recs if key in x and x.get("step", 0) > 0 and x[key] > 0]
    if len({s for s, _ in pts}) < 3:
      continue
    batch = _num(r.get("batch_size")) or 1.0
    try:
      fit = scaling.fit_power_law([s * batch for s, _ in pts], [v for _, v in pts], with_floor=True)
    except (ValueError, RuntimeError):
      continue
    out.append({"name": r["name"], "non_embedding_params": r["_n"], "metric": key,
                "unit": "rows" if batch != 1.0 else "steps", "alpha_d": fit["alpha"], "d_c": fit["n_c"],
                "l_inf": fit["l_inf"]})
  return out


def _compute_section(rows):
  budgets = collections.defaultdict(list)
  for r in rows:
    if r["_budget"] is not None and r["_loss"]:
      budgets[(r["_key"][0], r["_budget"])].append(r)
  if not budgets:
    return [], []
  lines = ["## Fixed compute", "", "At each training-FLOPs budget the runs trade model size against serial steps "
           "(the study's configuration tables); ★ marks the lowest test loss.", "",
           "| budget (FLOPs) | backbone | run | N | batch size | steps | devices | train s | test loss | |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  out = []
  for (backbone, budget) in sorted(budgets, key=lambda k: (k[0], k[1])):
    rs = sorted(budgets[(backbone, budget)], key=lambda r: r["_n"] or 0)
    best = min(rs, key=lambda r: r["_loss"])
    for r in rs:
      lines.append(f"| {budget:.3g} | {backbone} | {r['name']} | {_fmt(r['_n'], ',.0f')} | "
                   f"{r.get('batch_size') or '-'} | {_fmt(_num(r.get('step')), '.0f')} | {r.get('devices') or 1} | "
                   f"{_fmt(_num(r.get('train_seconds')), '.0f')} | {r['_loss']:.4f} | {'★' if r is best else ''} |")
    out.append({"backbone": backbone, "flops_budget": budget, "best": best["name"],
                "best_non_embedding_params": best["_n"], "best_test_loss": best["_loss"],
                "runs": [{"name": r["name"], "non_embedding_params": r["_n"], "test_loss": r["_loss"],
                          "steps": _num(r.get("step"))} for r in rs]})
  return lines + [""], out


def _new_axes(plt):
  return plt.subplots(figsize=(6, 4.5))


def _save(plt, fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _downstream_section(workdir, rows):
  """Lift table: per group of runs differing only in size, each task's AUC / recall@1% and lift over the smallest."""
  results = {}
  for r in rows:
    d = os.path.join(workdir, "runs", r["name"], "downstream")
    if os.path.isdir(d):
      for fname in sorted(os.listdir(d)):
        if fname.endswith(".json"):
          with open(os.path.join(d, fname)) as f:
            results.setdefault(r["name"], {})[fname[:-5]] = json.load(f)
  if not results:
    return [], {}
  groups = collections.defaultdict(list)
  for r in rows:
    if r["name"] in results and r["_n"]:
      groups[r["_key"]].append(r)
  lines = ["## Downstream tasks by model size", "", "gpt-ads-downstream on each run (test users): AUC and recall at "
           "1% FPR, with the lift over the group's smallest model in brackets — the study's Table 5.", ""]
  out = {}
  for key, rs in groups.items():
    rs = sorted(rs, key=lambda r: r["_n"])
    tasks = sorted({t for r in rs for t in results[r["name"]]})
    lines += [f"**{_label(key)}**", "", "| run | N | test loss | " + " | ".join(
        f"{t} AUC | {t} recall@1%" for t in tasks) + " |", "|---|---|---|" + "---|---|" * len(tasks)]
    base = results[rs[0]["name"]]
    for r in rs:
      cells = [r["name"], f"{r['_n']:,.0f}", _fmt(r["_loss"])]
      for t in tasks:
        res, b = results[r["name"]].get(t), base.get(t)
        for get in (lambda x: x["auc"], lambda x: x["recall_at_fpr"]["0.01"]):
          v, v0 = (get(res) if res else None), (get(b) if b else None)
          lift = f" ({100 * (v / v0 - 1):+.1f}%)" if v is not None and v0 else ""
          cells.append(f"{_fmt(v, '.4f')}{lift}")
      lines.append("| " + " | ".join(cells) + " |")
    bayes = [results[rs[0]["name"]].get(t, {}).get("bayes") for t in tasks]
    if any(bayes):
      cells = ["Bayes-optimal", "-", _fmt(rs[0]["_bayes"])]
      for b in bayes:
        cells += [_fmt(b["auc"], ".4f"), _fmt(b["recall_at_fpr"]["0.01"], ".4f")] if b else ["-", "-"]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    out[_label(key)] = {r["name"]: results[r["name"]] for r in rs}
  return lines, out


def _length_section(downstream: dict) -> tuple[list[str], list[tuple]]:
  """Recall at 1% / 5% FPR by bucket of predicted-event count (downstream JSONs' `by_length`) for every size,
  beside the Bayes-optimal detector's, with bootstrap 95% intervals: the study's length finding. -> (lines,
  [(task, bucket names, {run: (N, [recall@1% per bucket])}, [Bayes recall@1% per bucket])] for the plot)."""
  lines, series = [], []
  for group, runs in downstream.items():
    tasks = sorted({t for res in runs.values() for t, r in res.items() if "by_length" in r})
    for task in tasks:
      have = {name: res[task] for name, res in runs.items() if task in res and "by_length" in res[task]}
      order = ("short", "medium", "long")  # downstream.length_groups' names; JSON may reorder them
      buckets = sorted(next(iter(have.values()))["by_length"], key=lambda b: (order + (b,)).index(b.split(" ")[0]))
      lines += [f"## Recall at fixed FPR by sequence length: {task} ({group})", "",
                "Test users split into terciles of predicted-event count; recall at 1% / 5% FPR within each "
                "bucket, [bootstrap 95% interval of the 1% figure].", "",
                "| run | " + " | ".join(f"{b}: users / bots | recall@1% | recall@5%" for b in buckets) + " |",
                "|---|" + "---|---|---|" * len(buckets)]
      curves, bayes_row, bayes_vals = {}, ["Bayes-optimal"], []
      for name, r in have.items():
        cells, vals = [name], []
        for b in buckets:
          g = r["by_length"][b]
          m, ci = g.get("model"), g.get("model_recall_ci95", {}).get("0.01", [None, None])
          cells += [f"{g['users']} / {g['positives']}",
                    f"{_fmt(m and m['recall_at_fpr']['0.01'], '.3f')} [{_fmt(ci[0], '.2f')}, {_fmt(ci[1], '.2f')}]",
                    _fmt(m and m["recall_at_fpr"]["0.05"], ".3f")]
          vals.append(m["recall_at_fpr"]["0.01"] if m else np.nan)
        curves[name] = vals
        lines.append("| " + " | ".join(cells) + " |")
      for b in buckets:
        bay = next(iter(have.values()))["by_length"][b].get("bayes")
        bayes_row += ["", _fmt(bay and bay["recall_at_fpr"]["0.01"], ".3f"),
                      _fmt(bay and bay["recall_at_fpr"]["0.05"], ".3f")]
        bayes_vals.append(bay["recall_at_fpr"]["0.01"] if bay else np.nan)
      lines += ["| " + " | ".join(bayes_row) + " |", ""]
      series.append((task, buckets, curves, bayes_vals))
  return lines, series


def _plot_lengths(plt, path, series) -> None:
  fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 4), squeeze=False)
  for ax, (task, buckets, curves, bayes) in zip(axes[0], series):
    x = np.arange(len(buckets))
    for name, vals in curves.items():
      ax.plot(x, vals, marker="o", label=name)
    ax.plot(x, bayes, "k--", label="Bayes-optimal")
    ax.set_xticks(x, [b.split(" ")[0] for b in buckets])
    ax.set_ylim(0, 1.02)
    ax.set_title(task)
    ax.set_ylabel("recall at 1% FPR")
    ax.legend(fontsize=7)
  _save(plt, fig, path)


def _plot_params(plt, path, rows, fits):
  fig, ax = _new_axes(plt)
  for key, f in fits.items():
    rs = [r for r in rows if r["name"] in f["runs"]]
    n = np.array([r["_n"] for r in rs])
    for what, marker in (("test_loss", "o"), ("excess_loss", "s")):
      fit = f[what]
      if not fit:
        continue
      y = np.array([r["_loss"] - (r["_bayes"] if what == "excess_loss" else 0.0) for r in rs])
      pts = ax.loglog(n, y, marker, label=f"{_label(key)}: {what.replace('_', ' ')}")
      grid = np.geomspace(n.min() / 2, n.max() * 100, 100)
      ax.loglog(grid, scaling.power_law(grid, fit["alpha"], fit["n_c"], fit["l_inf"]), "-", color=pts[0].get_color(),
                label=f"α={fit['alpha']:.3f} (R² {fit['r2']:.2f})")
  if not fits:
    ax.loglog([r["_n"] for r in rows if r["_n"] and r["_loss"]],
              [r["_loss"] for r in rows if r["_n"] and r["_loss"]], "o", label="runs")
  ax.set_xlabel("non-embedding parameters N")
  ax.set_ylabel("test loss (nats / event)")
  ax.legend(fontsize="x-small")
  _save(plt, fig, path)


def _plot_data(plt, path, data):
  fig, ax = _new_axes(plt)
  for name, d in data.items():
    ax.semilogx(d["users"], d["test_loss"], "o-", label=f"{name} (N={d['non_embedding_params']:,.0f})")
  if data:
    ax.axhline(next(iter(data.values()))["target"], color="gray", ls=":", label="target")
  ax.set_xlabel("training users")
  ax.set_ylabel("test loss")
  ax.legend(fontsize="x-small")
  _save(plt, fig, path)


def _plot_flops(plt, path, workdir, rows, front):
  """Each run's learning curve against training FLOPs so far, one colour per model size, and the frontier."""
  fig, ax = _new_axes(plt)
  colours = {}
  for r in sorted(rows, key=lambda r: r["_n"] or 0):
    flops, step = _num(r.get("train_flops")), _num(r.get("step"))
    if not flops or not step:
      continue
    recs = _read_jsonl(workdir_lib.metrics_file(os.path.join(workdir, "runs", r["name"])))
    key = "eval/loss" if sum("eval/loss" in x for x in recs) >= 2 else "train/loss"
    pts = [(x["step"] * flops / step, x[key]) for x in recs if key in x and x.get("step", 0) > 0]
    if not pts:
      continue
    label = f"N={r['_n']:,.0f}" if r["_n"] not in colours else None
    line = ax.loglog(*zip(*pts), ".-", alpha=0.7, color=colours.get(r["_n"]), label=label)
    colours.setdefault(r["_n"], line[0].get_color())
  if front:
    ax.loglog([f for f, _, _ in front], [l for _, l, _ in front], "k*--", ms=9, label="frontier (test loss)")
  ax.set_xlabel("training FLOPs")
  ax.set_ylabel("loss (curves: eval, or sampled train loss)")
  ax.legend(fontsize="x-small")
  _save(plt, fig, path)


def _plot_curves(plt, path, workdir, rows):
  fig, ax = _new_axes(plt)
  for r in rows:
    recs = _read_jsonl(workdir_lib.metrics_file(os.path.join(workdir, "runs", r["name"])))
    recs = [x for x in recs if "train/loss" in x]
    if recs:
      ax.plot([x["step"] for x in recs], [x["train/loss"] for x in recs], label=r["name"])
  ax.set_xlabel("step")
  ax.set_ylabel("train/loss")
  if ax.lines and len(ax.lines) <= 16:
    ax.legend(fontsize="x-small")
  _save(plt, fig, path)


def report(workdir: str, *, title: str = "Scaling report", with_floor: bool = False) -> str:
  """Writes REPORT.md, fit.json and the PNGs into `workdir` from its results.csv; returns the REPORT.md path."""
  rows = _rows(workdir)
  lines = [f"# {title}", "", "| run | backbone | non-embedding params | params | devices | train s | train FLOPs | "
           "batch size | steps | train users | test loss | gap closed |", "|---" * 12 + "|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['_key'][0]} | {_fmt(r['_n'], ',.0f')} | {_fmt(_num(r.get('params')), ',.0f')} | "
                 f"{r.get('devices') or 1} | {_fmt(_num(r.get('train_seconds')), '.0f')} | "
                 f"{_fmt(_num(r.get('train_flops')), '.3g')} | {r.get('batch_size') or '-'} | "
                 f"{_fmt(_num(r.get('step')), '.0f')} | {_fmt(r['_users'], ',.0f')} | {_fmt(r['_loss'])} | "
                 f"{_fmt(_num(r.get('gap_closed')), '.3f')} |")
  lines.append("")
  fits = _size_fits(rows, with_floor)
  lines += _size_section(fits)
  data_lines, data = _data_section(rows)
  lines += data_lines
  curves = _curve_fits(workdir, rows)
  if curves:
    lines += ["### L(D) on each run's learning curve", "",
              "L(D) = (D_c / D)^α_D + L_∞, D = rows of training seen (or steps).", "",
              "| run | N | curve | D unit | α_D | D_c | L_∞ |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {d['name']} | {_fmt(d['non_embedding_params'], ',.0f')} | {d['metric']} | {d['unit']} | "
              f"{d['alpha_d']:.4f} | {d['d_c']:.4g} | {d['l_inf']:.4f} |"
              for d in sorted(curves, key=lambda d: d["non_embedding_params"] or 0)]
    lines.append("")
  compute_lines, compute = _compute_section(rows)
  lines += compute_lines
  downstream_lines, downstream = _downstream_section(workdir, rows)
  lines += downstream_lines
  length_lines, length_series = _length_section(downstream)
  lines += length_lines
  front = scaling.frontier([{"name": r["name"], "train_flops": r.get("train_flops"), "test_loss": r["_loss"]}
                            for r in rows])
  lines += ["## Compute-efficient frontier", "", "| train FLOPs | test loss | run |", "|---|---|---|"]
  lines += [f"| {f:.3g} | {l:.4f} | {nm} |" for f, l, nm in front]
  lines += [""]

  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  _plot_params(plt, os.path.join(workdir, "loss_vs_params.png"), rows, fits)
  _plot_flops(plt, os.path.join(workdir, "loss_vs_flops.png"), workdir, rows, front)
  _plot_curves(plt, os.path.join(workdir, "learning_curves.png"), workdir, rows)
  pngs = ["loss_vs_params", "loss_vs_flops", "learning_curves"]
  if data:
    _plot_data(plt, os.path.join(workdir, "loss_vs_data.png"), data)
    pngs.insert(1, "loss_vs_data")
  if length_series:
    _plot_lengths(plt, os.path.join(workdir, "recall_by_length.png"), length_series)
    pngs.append("recall_by_length")
  lines += [f"![{p.replace('_', ' ')}]({p}.png)" for p in pngs] + [""]

  out = {"runs": len(rows), "size_fits": [{"group": _label(k), "backbone": k[0], "num_train_users": k[1], **v}
                                          for k, v in fits.items()],
         "data": data, "curves": curves, "compute": compute, "downstream": downstream,
         "frontier": [{"train_flops": f, "test_loss": l, "name": nm} for f, l, nm in front]}
  with open(os.path.join(workdir, "fit.json"), "w") as f:
    json.dump(out, f, indent=2, default=float)
  path = os.path.join(workdir, "REPORT.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path

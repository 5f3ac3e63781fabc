"""`gpt-ads-sweep --sweep=configs/sweeps/NAME.py[:ARGS] --workdir=DIR [--print_commands]`.

A sweep file defines `get_sweep(arg) -> [run, ...]`; a run is {"name", "config" (a config file path), "arg" (its
`get_config` argument), "overrides" ({dotted key: value}), optionally "flops_budget" (training FLOPs: the run
gets the steps that spend them, so model size trades against steps at fixed compute)}, usually built with
`grid`; data fractions are `data.num_train_users` values. `--downstream=LABEL:TASK,...` also runs
gpt-ads-downstream on every run (the report then has the study's lift table). Each run trains in
`DIR/runs/<name>`: runs one after another here (resumable: a run with an eval.json is skipped, a half-done run
resumes from its checkpoints), or `--print_commands` prints one `gpt-ads-train` command per run for a cluster.
Every finished run's eval.json (and the config keys of CONFIG_KEYS) is gathered into `DIR/results.csv` (one row
per run), and `gpt_ads.scaling.report` fits and plots them into `DIR/REPORT.md` (+ fit.json, PNGs).
"""

import csv
import itertools
import json
import os
import shlex

from gpt_ads import config_lib, features
from gpt_ads import model as model_lib
from gpt_ads.data import datasets, store
from gpt_ads.downstream import tasks as downstream
from gpt_ads.scaling import report as sweep_report
from gpt_ads.training import accounting, train
from gpt_ads.training import workdir as workdir_lib

RESULT_KEYS = ("test_loss", "gap_closed", "gap_closed_joint", "non_embedding_params", "params", "train_flops",
               "flops_per_position", "events_per_sec", "step", "bayes_factorized_loss", "bayes_joint_loss",
               "unigram_loss", "devices", "train_seconds")
CONFIG_KEYS = {"backbone": "model.backbone", "event_factorization": "model.event_factorization",
               "d_model": "model.d_model", "num_layers": "model.num_layers", "batch_size": "train.batch_size",
               "num_train_users": "data.num_train_users",
               "max_train_users": "data.max_train_users"}  # column: config key (empty when a config lacks it)


def grid(*, config: str, overrides: dict | None = None, **axes) -> list[dict]:
  """The product of `axes` ({name: [values]}); axis "size" / "run" go to the config argument, dotted names to
  overrides. Run names join the varied values: e.g. size=nano,train.batch_size=64 -> "nano_bs64"-like names."""
  keys = list(axes)
  runs = []
  for values in itertools.product(*(axes[k] if isinstance(axes[k], (list, tuple)) else [axes[k]] for k in keys)):
    arg, over = [], dict(overrides or {})
    budget = None
    for k, v in zip(keys, values):
      if k == "flops_budget":
        budget = float(v)
      elif "." in k:
        over[k] = v
      else:
        arg.append(f"{k}={v}")
    name = "_".join(_name_part(k, v) for k, v in zip(keys, values)) or "run"
    run = {"name": name, "config": config, "arg": ",".join(arg), "overrides": over}
    if budget is not None:
      run["flops_budget"] = budget
    runs.append(run)
  return runs


def _name_part(key: str, value) -> str:
  if key == "flops_budget":
    return "flops" + f"{float(value):.0e}".replace("+", "")
  return f"{key.split('.')[-1]}-{value}" if "." in key else str(value)


def load_sweep(spec: str) -> list[dict]:
  path, _, arg = spec.partition(":")
  runs = config_lib.load_file(path, "--sweep").get_sweep(arg or None)
  names = [r["name"] for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"--sweep={spec}: run names must be unique, got {names}")
  return runs


def steps_for_budget(config, budget: float) -> int:
  """Training steps that spend `budget` FLOPs (gpt_ads.training.accounting's formula) with this config's model
  and batch."""
  if config.data.dir:  # a prepared data set decides the schema's vocabularies
    schema = datasets.schema_for(store.open_dir(config.data.dir), config)
  else:
    schema = features.Schema.from_config(config.schema.features)
  model = model_lib.from_config(schema, config)
  n = accounting.param_counts(accounting.abstract_params(model), schema)["non_embedding_params"]
  t = config.model.max_len
  per_step = accounting.flops_per_position(model.cfg, schema, n, t) * config.train.batch_size * t
  return max(1, int(round(budget / per_step)))


def run_config(run: dict, workdir: str | None = None):
  """The ml_collections config of one run (its config file's get_config(arg) with the overrides applied; a run
  with a "flops_budget" gets the number of steps that spends it, and warmup capped at a tenth of them). With
  `workdir` (the sweep's), runs on generated data share one copy of it: `data.generated_dir=DIR/generated`
  unless the run sets data.dir or data.generated_dir itself."""
  config = config_lib.load_file(run["config"]).get_config(run.get("arg") or None)
  for key, value in run.get("overrides", {}).items():
    try:
      config_lib.override(config, key, value)
    except ValueError:
      raise ValueError(f"run {run['name']!r}: override {key} names no config key") from None
  data = config.get("data", {})
  if workdir and "generated_dir" in data and not data.get("dir") and not data.generated_dir:
    config.data.generated_dir = os.path.join(workdir, "generated")
  if run.get("flops_budget"):
    config.train.num_steps = steps_for_budget(config, run["flops_budget"])
    config.train.warmup_steps = min(config.train.warmup_steps, max(1, config.train.num_steps // 10))
  return config


def command(run: dict, workdir: str) -> str:
  cfg = run["config"] + (f":{run['arg']}" if run.get("arg") else "")
  parts = ["gpt-ads-train", f"--config={cfg}", f"--workdir={os.path.join(workdir, 'runs', run['name'])}"]
  budget_keys = ("train.num_steps", "train.warmup_steps") if run.get("flops_budget") else ()
  parts += [f"--config.{k}={v}" for k, v in run.get("overrides", {}).items() if k not in budget_keys]
  config = run_config(run, workdir)
  if config.get("data", {}).get("generated_dir") and "data.generated_dir" not in run.get("overrides", {}):
    parts.append(f"--config.data.generated_dir={config.data.generated_dir}")
  if run.get("flops_budget"):
    parts += [f"--config.train.num_steps={config.train.num_steps}",
              f"--config.train.warmup_steps={config.train.warmup_steps}"]
  return " ".join(shlex.quote(p) for p in parts)


def gather(runs: list[dict], workdir: str) -> str:
  """Writes DIR/results.csv from the finished runs' eval.json; returns its path."""
  path = os.path.join(workdir, "results.csv")
  rows = []
  for run in runs:
    ev_path = workdir_lib.eval_file(os.path.join(workdir, "runs", run["name"]))
    if not os.path.exists(ev_path):
      continue
    with open(ev_path) as f:
      ev = json.load(f)
    config = run_config(run)
    rows.append({"name": run["name"], "config": run["config"], "arg": run.get("arg", ""),
                 "overrides": json.dumps(run.get("overrides", {}), sort_keys=True),
                 "flops_budget": run.get("flops_budget", ""),
                 **{k: config[key.split(".")[0]].get(key.split(".")[1]) for k, key in CONFIG_KEYS.items()},
                 **{k: ev.get(k) for k in RESULT_KEYS}})
  with open(path + ".tmp", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["name", "config", "arg", "overrides", "flops_budget", *CONFIG_KEYS,
                                           *RESULT_KEYS])
    writer.writeheader()
    writer.writerows(rows)
  os.replace(path + ".tmp", path)
  return path


def run_sweep(runs: list[dict], workdir: str, *, all_runs: list[dict] | None = None, tasks=(),
              downstream_max_users: int = 20_000, title: str = "Scaling report") -> str:
  """Trains every run of `runs` not done yet in `workdir`/runs/<name> (one after another, each resumable), runs
  the downstream `tasks` ((label, task) pairs) on each, then gathers results.csv over `all_runs` (default: runs)
  and writes REPORT.md; returns the report's path."""
  for i, run in enumerate(runs, 1):
    run_dir = os.path.join(workdir, "runs", run["name"])
    if os.path.exists(workdir_lib.eval_file(run_dir)):
      print(f"[{i}/{len(runs)}] {run['name']}: done, skipped")
      continue
    print(f"[{i}/{len(runs)}] {run['name']}: {command(run, workdir)}", flush=True)
    result = train.train_and_evaluate(run_config(run, workdir), run_dir)
    print(f"[{i}/{len(runs)}] {run['name']}: test_loss={result['test_loss']:.4f}", flush=True)
  for run in runs if tasks else ():
    run_dir = os.path.join(workdir, "runs", run["name"])
    for label, task in tasks:
      if not os.path.exists(downstream.output_path(run_dir, label, task)):
        r = downstream.run_task(run_dir, None, label, task, max_users=downstream_max_users)
        print(f"{run['name']}: {label} {task} auc={r['auc']:.4f}", flush=True)
  print(f"wrote {gather(all_runs or runs, workdir)}")
  return sweep_report.report(workdir, title=title)

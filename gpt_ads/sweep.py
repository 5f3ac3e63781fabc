"""`gpt-ads-sweep --sweep=configs/sweeps/NAME.py[:ARGS] --workdir=DIR [--print_commands]`.

A sweep file defines `get_sweep(arg) -> [run, ...]`; a run is {"name", "config" (a config file path), "arg" (its
`get_config` argument), "overrides" ({dotted key: value}), optionally "flops_budget" (training FLOPs: the run
gets the steps that spend them, so model size trades against steps at fixed compute)}, usually built with
`grid`; data fractions are `data.num_train_users` values. `--downstream=LABEL:TASK,...` also runs
gpt-ads-downstream on every run (the report then has the study's lift table). Each run trains in
`DIR/runs/<name>`: runs one after another here (resumable: a run with an eval.json is skipped, a half-done run
resumes from its checkpoints), or `--print_commands` prints one `gpt-ads-train` command per run for a cluster.
Every finished run's eval.json (and the config keys of CONFIG_KEYS) is gathered into `DIR/results.csv` (one row
per run), and `gpt_ads.sweep_report` fits and plots them into `DIR/REPORT.md` (+ fit.json, PNGs).
"""

import csv
import importlib.util
import itertools
import json
import os
import shlex
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags, defined only by `run()` (sweep files import this module for `grid`)."""
  flags.DEFINE_string("sweep", None, "Sweep file[:ARGS] (get_sweep(arg) -> runs).")
  flags.DEFINE_string("workdir", None, "Sweep directory: runs/<name>/ and results.csv.")
  flags.DEFINE_bool("print_commands", False, "Print one gpt-ads-train command per run instead of running.")
  flags.DEFINE_string("only", None, "Comma-separated run names to run (default: all).")
  flags.DEFINE_string("title", "Scaling report", "Title of DIR/REPORT.md.")
  flags.DEFINE_list("downstream", [], "LABEL:TASK pairs (e.g. converted:probe,is_bot:anomaly) run with "
                    "gpt-ads-downstream on every finished run (skipped when done); REPORT.md gets the lift table.")
  flags.DEFINE_integer("downstream_max_users", 20_000, "--max_users of the downstream tasks.")
  flags.mark_flags_as_required(["sweep", "workdir"])

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


def _load_module(path: str, what: str):
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(spec: str) -> list[dict]:
  path, _, arg = spec.partition(":")
  runs = _load_module(path, "--sweep").get_sweep(arg or None)
  names = [r["name"] for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"--sweep={spec}: run names must be unique, got {names}")
  return runs


def steps_for_budget(config, budget: float) -> int:
  """Training steps that spend `budget` FLOPs (gpt_ads.accounting's formula) with this config's model and batch."""
  from gpt_ads import accounting, features
  from gpt_ads.data import datasets, store
  from gpt_ads.model import Model, ModelConfig
  if config.data.dir:  # a prepared data set decides the schema's vocabularies
    schema = datasets.schema_for(store.open_dir(config.data.dir), config)
  else:
    schema = features.Schema.from_config(config.schema.features)
  model = Model(schema, ModelConfig.from_config(config.model))
  n = accounting.param_counts(accounting.abstract_params(model), schema)["non_embedding_params"]
  t = config.model.max_len
  per_step = accounting.flops_per_position(model.cfg, schema, n, t) * config.train.batch_size * t
  return max(1, int(round(budget / per_step)))


def run_config(run: dict, workdir: str | None = None):
  """The ml_collections config of one run (its config file's get_config(arg) with the overrides applied; a run
  with a "flops_budget" gets the number of steps that spends it, and warmup capped at a tenth of them). With
  `workdir` (the sweep's), runs on generated data share one copy of it: `data.generated_dir=DIR/generated`
  unless the run sets data.dir or data.generated_dir itself."""
  config = _load_module(run["config"], "config").get_config(run.get("arg") or None)
  for key, value in run.get("overrides", {}).items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    if last not in node:
      raise ValueError(f"run {run['name']!r}: override {key} names no config key")
    node[last] = value
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
    ev_path = os.path.join(workdir, "runs", run["name"], "eval.json")
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    runs = all_runs = load_sweep(FLAGS.sweep)
    tasks = [tuple(x.split(":", 1)) for x in FLAGS.downstream]
    if any(len(t) != 2 for t in tasks):
      raise ValueError(f"--downstream={','.join(FLAGS.downstream)}: give LABEL:TASK pairs")
    if FLAGS.only:
      wanted = set(FLAGS.only.split(","))
      unknown = wanted - {r["name"] for r in runs}
      if unknown:
        raise ValueError(f"--only names unknown runs {sorted(unknown)}")
      runs = [r for r in runs if r["name"] in wanted]
    if FLAGS.print_commands:
      for run in runs:
        print(command(run, FLAGS.workdir))
      return
    from gpt_ads import train
    for i, run in enumerate(runs, 1):
      run_dir = os.path.join(FLAGS.workdir, "runs", run["name"])
      if os.path.exists(os.path.join(run_dir, "eval.json")):
        print(f"[{i}/{len(runs)}] {run['name']}: done, skipped")
        continue
      print(f"[{i}/{len(runs)}] {run['name']}: {command(run, FLAGS.workdir)}", flush=True)
      result = train.train_and_evaluate(run_config(run, FLAGS.workdir), run_dir)
      print(f"[{i}/{len(runs)}] {run['name']}: test_loss={result['test_loss']:.4f}", flush=True)
    if tasks:
      from gpt_ads import downstream
      for run in runs:
        run_dir = os.path.join(FLAGS.workdir, "runs", run["name"])
        for label, task in tasks:
          if not os.path.exists(downstream.output_path(run_dir, label, task)):
            r = downstream.run_task(run_dir, None, label, task, max_users=FLAGS.downstream_max_users)
            print(f"{run['name']}: {label} {task} auc={r['auc']:.4f}", flush=True)
    print(f"wrote {gather(all_runs, FLAGS.workdir)}")
    from gpt_ads import sweep_report
    print(f"wrote {sweep_report.report(FLAGS.workdir, title=FLAGS.title)}")
  except (ValueError, FloatingPointError) as e:
    print(f"gpt-ads-sweep: error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()

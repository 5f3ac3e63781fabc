"""MovieLens-1M next-item benchmark: train on this machine, rank all 3,416 items, HR@k / NDCG@k.

    python benchmarks/ml1m.py --data_dir=/work/shared/data --workdir=/tmp/ml1m_bench --out=/tmp/ml1m.json

The protocol of the data set's README (`/work/shared/data/README.md`), exactly: leave-one-out on
ml-1m/train/input.txt (the last item of each line is the test target, the second-to-last the validation target,
training sees the rest), every item ranked, the user's input items excluded, all 6,040 users. Metrics:
gpt_ads.downstream.retrieval.

On a CPU host the step runs data-parallel over one XLA device per core (`--cpu_devices`).

Per variant (`--variants`, default item then multi; configs/ml1m.py:features=<variant>):
  1. train `configs/ml1m.py` in WORKDIR/<variant> (resumes a half-done run; the data set is prepared once in
     WORKDIR/data);
  2. early stopping on validation: every kept checkpoint (the last `keep_checkpoints`, `checkpoint_every` apart)
     is ranked on the validation targets and the best validation NDCG@10 is kept;
  3. that checkpoint is ranked on the test targets.
`--minutes=M` gives every variant the same training wall budget instead of a step count: before any variant
trains, each one runs a short probe (`--probe_steps` steps, the first one, which compiles, not timed) and its
step count becomes M minutes over the measured seconds per step, so the comparison holds at equal CPU time on
slower and faster hosts. The probe's figure and the budget are in each variant's JSON (`seconds_per_step`,
`budget_minutes`).
--out gets JSON: the first variant's figures at the top level (`test_ndcg@10`, `test_hr@10`, `val_ndcg@10`, ...,
`wall_seconds` = its training + selection + test time, `best_step`) and every variant under `variants`.

Interruption: a SIGTERM (or Ctrl-C) stops the benchmark with one line on stderr and exit status 143 (a SIGTERM
during training lets the trainer save a checkpoint at that step first; Ctrl-C leaves the last periodic one).
Rerunning the same command resumes: finished variants train no
further, a half-trained one continues from its checkpoint, and `--minutes` reuses the step count of the first
probe (WORKDIR/<variant>_probe.json), so the resumed run has the same schedule. A variant's `wall_seconds` and
`train_wall_seconds` add up the time of every attempt (`attempts` counts them).
"""

import datetime
import json
import os
import shutil
import signal
import sys
import time

from absl import app, flags, logging

_ML1M_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "ml1m.py")

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder holding ml-1m/ (or ml-1m itself).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the prepared data set, runs and checkpoints go.")
_OUT = flags.DEFINE_string("out", None, "JSON file of the results.")
_VARIANTS = flags.DEFINE_list("variants", ["item", "multi"], "configs/ml1m.py feature sets, in report order.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps (default: the config's).")
_MINUTES = flags.DEFINE_float(
    "minutes", None, "Training wall budget per variant, in minutes: the step count is set from a step time "
    "measured by a probe of each variant (compilation, ranking and the probe itself not counted). Not with --steps.")
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", 60, "Steps of the --minutes probe (the first one is not timed).")
_SET = flags.DEFINE_multi_string("set", [], "Config override KEY=VALUE (e.g. model.dropout=0.3), any number.")
_MAX_USERS = flags.DEFINE_integer("max_users", None, "Rank only the first N users (smoke tests; default: all).")
# One host device per core, rounded down to a power of two (at most 16) so that it divides the batch's rows.
_DEFAULT_CPU_DEVICES = min(16, 1 << ((os.cpu_count() or 1).bit_length() - 1))
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", _DEFAULT_CPU_DEVICES, "XLA host devices when training on CPU: one per core runs the step "
    "data-parallel over the cores (1.9 vs 2.3 s/step on 2 cores); must divide train.batch_size; 0 leaves XLA_FLAGS "
    "alone. No effect on a GPU / TPU host. Default: the core count rounded down to a power of two, at most 16.")
_KS = (10, 50, 200)
flags.mark_flags_as_required(["data_dir", "workdir", "out"])


EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a job it terminated


class Stopped(Exception):
  """A SIGTERM / Ctrl-C stopped the benchmark; the message says where and how to resume."""


def _on_signal(signum, frame):
  raise Stopped(f"stopped by {signal.Signals(signum).name}")


def _log(line: str) -> None:
  print(f"[ml1m {datetime.datetime.now():%H:%M:%S}] {line}", flush=True)


def _config(variant: str, data_dir: str, steps: int | None = None):
  from gpt_ads import config_lib
  c = config_lib.from_file(f"{_ML1M_CONFIG}:features={variant}" + (f",steps={steps}" if steps else ""))
  c.data.dir = data_dir
  for item in _SET.value:
    key, _, value = item.partition("=")
    config_lib.override(c, key, value, parse=True)
  return c


def seconds_per_step(variant: str, data_dir: str, workdir: str) -> float:
  """A variant's measured training seconds per step: a `--probe_steps` run in WORKDIR/<variant>_probe, removed;
  the figure is kept in WORKDIR/<variant>_probe.json, which a rerun of the benchmark reads instead of probing."""
  from gpt_ads.training import train
  saved = os.path.join(workdir, f"{variant}_probe.json")
  if os.path.exists(saved):
    seconds = json.load(open(saved))["seconds_per_step"]
    _log(f"{variant}: {seconds:.3f} s/step from the earlier probe ({saved})")
    return seconds
  config = _config(variant, data_dir, _PROBE_STEPS.value)
  config.train.log_every = 10
  run_dir = os.path.join(workdir, f"{variant}_probe")
  shutil.rmtree(run_dir, ignore_errors=True)
  result = train.train_and_evaluate(config, run_dir)
  if result.get("preempted"):
    raise Stopped(f"stopped by SIGTERM during {variant}'s step-time probe")
  shutil.rmtree(run_dir)
  seconds = result["train_seconds"] / (_PROBE_STEPS.value - 1)  # timed from the end of the first step
  _write_json(saved, {"seconds_per_step": seconds, "probe_steps": _PROBE_STEPS.value})
  _log(f"{variant}: {seconds:.3f} s/step over a {_PROBE_STEPS.value}-step probe")
  return seconds


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as fh:
    json.dump(value, fh, indent=2)
  os.replace(tmp, path)


def run_variant(variant: str, data_dir: str, workdir: str, step_seconds: float | None = None) -> dict:
  from gpt_ads.training import train
  steps = _STEPS.value if step_seconds is None else max(1, int(_MINUTES.value * 60 / step_seconds))
  config = _config(variant, data_dir, steps)
  run_dir = os.path.join(workdir, variant)
  attempts_file = os.path.join(workdir, f"{variant}_attempts.json")  # the wall time of the stopped attempts
  before = json.load(open(attempts_file)) if os.path.exists(attempts_file) else {"seconds": 0.0, "attempts": 0}
  t0 = time.time()
  try:
    _log(f"{variant}: training {config.train.num_steps} steps in {run_dir}")
    result = train.train_and_evaluate(config, run_dir)
    if result.get("preempted"):
      raise Stopped(f"stopped by SIGTERM at step {result['step']} of {variant} (checkpoint saved)")
    train_wall = before["seconds"] + time.time() - t0
    return _select_and_test(variant, config, data_dir, run_dir, result, t0 - before["seconds"], train_wall,
                            step_seconds) | {"attempts": before["attempts"] + 1}
  except (Stopped, KeyboardInterrupt):  # this attempt's time counts in the resumed run's wall_seconds
    _write_json(attempts_file, {"seconds": before["seconds"] + time.time() - t0, "attempts": before["attempts"] + 1})
    raise


def _select_and_test(variant, config, data_dir, run_dir, result, t0, train_wall, step_seconds) -> dict:
  """Early stopping on validation over the kept checkpoints, then the test figures (the variant's JSON)."""
  from gpt_ads import api
  from gpt_ads.downstream import retrieval
  from gpt_ads.training import checkpoint
  from gpt_ads.data import store
  prepared = store.open_dir(data_dir)
  steps = checkpoint.Checkpointer(run_dir, keep=config.train.keep_checkpoints).all_steps()
  val = {}
  for step in sorted(steps):
    params, schema, cfg = api.load(run_dir, step)
    val[step] = retrieval.evaluate(params, prepared.source("validation"), feature="item", schema=schema,
                                   config=cfg, ks=_KS, max_users=_MAX_USERS.value)
    _log(f"{variant}: step {step}: validation NDCG@10 {val[step]['ndcg@10']:.4f} HR@10 {val[step]['hr@10']:.4f}")
  best = max(val, key=lambda s: val[s]["ndcg@10"])
  params, schema, cfg = api.load(run_dir, best)
  test = retrieval.evaluate(params, prepared.source("test"), feature="item", schema=schema, config=cfg, ks=_KS,
                            max_users=_MAX_USERS.value)
  _log(f"{variant}: test (step {best}) NDCG@10 {test['ndcg@10']:.4f} HR@10 {test['hr@10']:.4f}")
  out = {"features": list(schema.names), "best_step": best, "steps": config.train.num_steps,
         "train_wall_seconds": train_wall, "wall_seconds": time.time() - t0,
         "train_seconds": result["train_seconds"], "events_per_sec": result["events_per_sec"],
         "non_embedding_params": result["non_embedding_params"], "test_loss": result["test_loss"],
         "validation_by_step": {str(s): v for s, v in sorted(val.items())},
         "config": json.loads(config.to_json())}
  if step_seconds is not None:
    out.update(budget_minutes=_MINUTES.value, seconds_per_step=step_seconds)
  out.update({f"val_{k}": v for k, v in val[best].items() if k != "users"})
  out.update({f"test_{k}": v for k, v in test.items() if k != "users"})
  out["users"] = test["users"]
  return out


def _write(variants: dict) -> None:
  from gpt_ads.data import movielens
  first = variants[_VARIANTS.value[0]]
  report = {k: v for k, v in first.items() if k.startswith(("test_", "val_"))}
  report.update({"wall_seconds": first["wall_seconds"], "best_step": first["best_step"], "variant": _VARIANTS.value[0],
                 "dataset": "ml-1m", "protocol": movielens.ML1M_PROTOCOL + "; all items ranked, input items "
                 "excluded", "date": f"{datetime.date.today()}", "command": " ".join(sys.argv),
                 "variants": variants})
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  _write_json(_OUT.value, report)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if _CPU_DEVICES.value and "xla_force_host_platform_device_count" not in xla_flags:  # before jax is imported
    os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_force_host_platform_device_count={_CPU_DEVICES.value}".strip()
  from gpt_ads.data import movielens, store
  signal.signal(signal.SIGTERM, _on_signal)  # the trainer installs its own while it trains, then restores this
  try:
    data = os.path.join(_WORKDIR.value, "data")
    try:
      store.open_dir(data)
    except ValueError:
      _log(f"preparing ml-1m from {_DATA_DIR.value} into {data}")
      movielens.build("ml-1m", _DATA_DIR.value, data, overwrite=True, log=_log)
    if _MINUTES.value is not None and (_STEPS.value or _MINUTES.value <= 0 or _PROBE_STEPS.value < 2):
      raise ValueError("--minutes: give a positive budget, --probe_steps >= 2, and no --steps")
    step_seconds = {}
    if _MINUTES.value is not None:  # all probes first, on the same quiet machine, before any variant trains
      step_seconds = {v: seconds_per_step(v, data, _WORKDIR.value) for v in _VARIANTS.value}
    variants = {}
    for v in _VARIANTS.value:  # --out is rewritten after each variant: a long run's first result is not lost
      variants[v] = run_variant(v, data, _WORKDIR.value, step_seconds.get(v))
      _write(variants)
  except (Stopped, KeyboardInterrupt) as e:
    print(f"benchmarks/ml1m.py: {str(e) or 'stopped by SIGINT'}; rerun the same command to resume",
          file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  except (ValueError, OSError) as e:
    print(f"benchmarks/ml1m.py: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"{'variant':8s} {'val NDCG@10':>12s} {'test NDCG@10':>13s} {'test HR@10':>11s} {'HR@50':>7s} {'HR@200':>7s}"
        f" {'minutes':>8s}")
  for v, r in variants.items():
    print(f"{v:8s} {r['val_ndcg@10']:12.4f} {r['test_ndcg@10']:13.4f} {r['test_hr@10']:11.4f} {r['test_hr@50']:7.4f}"
          f" {r['test_hr@200']:7.4f} {r['wall_seconds'] / 60:8.1f}")
  print(f"-> {_OUT.value}")


if __name__ == "__main__":
  app.run(main)

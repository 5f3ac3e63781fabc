"""A run directory: the names of what a run writes there, and the checks made on it before any compute.

    WORKDIR/model.json       the run's config, schema and data set (`save_run_file`; gpt_ads.api.load reads it)
    WORKDIR/checkpoints/     orbax checkpoints, one folder per step (gpt_ads.training.checkpoint)
    WORKDIR/metrics.jsonl    a record per log step (gpt_ads.training.logbook)
    WORKDIR/eval.json        the exact test evaluation, written last (gpt_ads.training.train.finish)
    WORKDIR/tensorboard/     TensorBoard summaries (gpt_ads.training.logbook)

Only process 0 writes (`is_writer`); JSON files are written whole (`write_json`: temp file + rename).

Checks (each a one-line ValueError saying what to change), in the order gpt_ads.training.train runs them:
  check_workdir       the workdir can be created and written
  check_resumable     a workdir with checkpoints: the schema / model shape / vocabularies must be the run's
  check_free_space    room for the checkpoints (keep_checkpoints + 1 being written)
"""

import dataclasses
import json
import os
import shutil
import tempfile

import jax
import ml_collections

from gpt_ads import config_lib, features

RUN_FILE = "model.json"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
TENSORBOARD = "tensorboard"


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def write_json(path: str, obj: dict) -> None:
  """Writes `obj` to `path` whole (temp file + rename); only process 0 writes."""
  if not is_writer():
    return
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def run_file_path(workdir: str) -> str:
  return os.path.join(workdir, RUN_FILE)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS)


def metrics_file(workdir: str) -> str:
  return os.path.join(workdir, METRICS_FILE)


def eval_file(workdir: str) -> str:
  return os.path.join(workdir, EVAL_FILE)


def save_run_file(workdir: str, schema: features.Schema, config, data_dir: str = "") -> None:
  """Writes `workdir/model.json` ({"config", "schema": [feature, ...] in schema order, "data_dir": the prepared
  data set trained on}): what gpt_ads.api.load needs besides the checkpoint."""
  write_json(run_file_path(workdir), {"config": json.loads(config.to_json_best_effort()),
                                      "schema": [dataclasses.asdict(f) for f in schema],
                                      "data_dir": os.path.abspath(data_dir)})


def read_run_file(workdir: str):
  """-> (config, schema, data_dir) from `workdir/model.json`; a one-line ValueError if it is missing."""
  path = run_file_path(workdir)
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: --workdir must be a gpt-ads-train run directory")
  with open(path) as f:
    meta = json.load(f)
  config = ml_collections.ConfigDict(meta["config"])
  schema = features.Schema(tuple(features.FeatureSpec(**f) for f in meta["schema"]))
  return config, schema, meta.get("data_dir", "")


def run_data_dir(workdir: str) -> str:
  """The prepared data set the run in `workdir` trained on ("" if unknown)."""
  return read_run_file(workdir)[2] if os.path.exists(run_file_path(workdir)) else ""


def check_workdir(workdir: str) -> None:
  """Fails at start, not after an hour, if the workdir cannot be written."""
  if not workdir:
    raise ValueError("--workdir is required")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise ValueError(f"--workdir={workdir!r} is not writable ({e.strerror}); choose another directory") from e


def feature_vocabularies_of(data_dir: str) -> dict[str, object] | None:
  """{feature: vocabulary dict} from a prepared data set's schema.json (None if unreadable)."""
  try:
    with open(os.path.join(data_dir, "schema.json")) as f:
      return {feat["name"]: feat.get("vocabulary") for feat in json.load(f)["features"]}
  except (OSError, ValueError, KeyError, TypeError):
    return None


def check_resumable(workdir: str, schema: features.Schema, config, data_dir: str | None = None) -> None:
  """A workdir that holds checkpoints must be resumed with the same model shape, schema and vocabularies.

  Reads `workdir/model.json` (written by the run that made the checkpoints); nothing to check without
  checkpoints. `data_dir`: the prepared data set this run reads (default config.data.dir); when it is another
  directory than the run's, their vocabularies must agree too (same ids for the same values).
  """
  run_file = run_file_path(workdir)
  ckpt_dir = checkpoint_dir(workdir)
  has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
  if not has_ckpt or not os.path.exists(run_file):
    return
  try:
    with open(run_file) as f:
      run = json.load(f)
    old_model, old_schema = run["config"]["model"], run["schema"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{run_file} is unreadable ({e}); it describes the checkpoints in {ckpt_dir}: restore it, or "
                     "use a new --workdir") from None
  diffs = [f"model.{k} {old_model.get(k)!r} (checkpoint) vs {config.model.get(k)!r} (now)"
           for k in config_lib.SHAPE_MODEL_KEYS if old_model.get(k) != config.model.get(k)]
  old_names, new_names = [f["name"] for f in old_schema], list(schema.names)
  if old_names != new_names:
    diffs.append(f"features {old_names} (checkpoint) vs {new_names} (now)")
  else:
    for old, new in zip(old_schema, schema):
      diffs += [f"{new.name}.{k} {old.get(k)!r} (checkpoint) vs {getattr(new, k)!r} (now)"
                for k in config_lib.SHAPE_FEATURE_KEYS if old.get(k) != getattr(new, k)]
  data_dir = os.path.abspath(data_dir or config.data.dir) if (data_dir or config.data.dir) else ""
  old_dir = run.get("data_dir", "")
  if not diffs and data_dir and old_dir and os.path.abspath(old_dir) != data_dir:
    old_vocab, new_vocab = feature_vocabularies_of(old_dir), feature_vocabularies_of(data_dir)
    if old_vocab is not None and new_vocab is not None:
      diffs += [f"the vocabulary of {name} in {data_dir} differs from the run's data set {old_dir}"
                for name in new_names if old_vocab.get(name) != new_vocab.get(name)]
  if diffs:
    raise ValueError(f"--workdir={workdir} holds checkpoints of a run that does not fit this config/data: "
                     f"{'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}; resume with the run's settings "
                     f"(see {run_file}) or use a new --workdir")


def check_free_space(workdir: str, checkpoint_bytes: int, *, keep: int) -> None:
  """Fails at start if the workdir's filesystem cannot hold the checkpoints to come (uncompressed estimate:
  keep_checkpoints of them plus one being written, less those already there)."""
  ckpt_dir = checkpoint_dir(workdir)
  existing = sum(n.isdigit() for n in os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else 0
  need = max(keep + 1 - existing, 1) * checkpoint_bytes
  free = shutil.disk_usage(workdir).free
  if free < need:
    mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    raise ValueError(f"--workdir={workdir} has {mib(free)} free but its checkpoints need about {mib(need)} more "
                     f"({mib(checkpoint_bytes)} each, keep_checkpoints={keep} + 1 being written); free some space, "
                     "lower config.train.keep_checkpoints or choose another --workdir")

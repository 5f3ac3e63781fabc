"""Config helpers: loading config files, preset arguments, model-size presets, run recipes, and validation
before any compute.

Checks (each a one-line ValueError saying what to change), in the order gpt_ads.training.train runs them:
  validate            unknown keys (KNOWN_KEYS), values out of range, bad model / feature settings
  check_batch         batch sizes divisible by the mesh's data parallelism (the mesh itself: gpt_ads.training.sharding)
  check_schema_fits   model.max_len against the features (copy_lags; from validate for generated data)
(the workdir's own checks, `check_workdir`, `check_resumable`, `check_free_space`: gpt_ads.training.workdir)
"""

import dataclasses
import importlib.util
import os

import ml_collections

from gpt_ads import features
from gpt_ads.model.config import ModelConfig

NONFINITE_MODES = ("stop", "skip")  # config.train.on_nonfinite (gpt_ads.training.health)
# config.train keys a config may leave out (older configs and run files), with their values when it does: the
# one place these defaults live (read them with `option`).
OPTIONAL_TRAIN = {"on_nonfinite": "stop", "max_nonfinite_skips": 10, "preemption_grace_seconds": 30.0,
                  "sparse_update_min_vocab": 0}

# Every key a config may have ("schema.features.<name>" entries are checked by gpt_ads.features /
# gpt_ads.data.datasets, "data.synthetic.*" by the generator, gpt_ads.data.synthetic). A key the code reads must
# be listed here, or `validate` rejects configs that set it.
KNOWN_KEYS = {
    "": ("seed", "model", "data", "schema", "train", "eval", "mesh", "sharding"),
    "model": tuple(f.name for f in dataclasses.fields(ModelConfig)),
    "data": ("dir", "generated_dir", "seed", "synthetic", "num_train_users", "num_val_users", "num_test_users",
             "num_shards", "pack", "packing_bins", "read_threads", "num_workers", "features", "max_train_users"),
    "schema": ("defaults", "features"),
    "schema.defaults": features.MODEL_SIDE_KEYS,
    "train": ("num_steps", "batch_size", "learning_rate", "warmup_steps", "lr_schedule", "final_lr_fraction",
              "weight_decay", "b1", "b2", "grad_clip", "grad_accum_steps", "log_every", "eval_every",
              "checkpoint_every", "keep_checkpoints", "init_output_bias", "on_nonfinite", "max_nonfinite_skips",
              "preemption_grace_seconds", "sparse_update_min_vocab"),
    "eval": ("batch_size", "vocab_chunk"),
    "mesh": ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor"),
    "sharding": ("rule_set", "rules"),
}
# What a checkpoint's arrays depend on: a resumed run must keep these (gpt_ads.training.train checks model.json).
SHAPE_MODEL_KEYS = ("d_model", "num_layers", "num_heads", "mlp_dim", "max_len", "combine", "scan_layers",
                    "vocab_pad_multiple", "backbone")
SHAPE_FEATURE_KEYS = ("vocab_size", "embed_dim", "loss", "tied", "copy_lags")

# Named model sizes, with their non-embedding parameters (≈ 12 L d², plus norms, biases and head projections)
# on the default schema with the study's independent heads (the chain adds ≈ 3 x 3 d² for its inputs);
# `tests/config_test.py` checks the range. nano..large run on a CPU; xl / xxl are the study's
# 85M / 201M classes, for accelerators.
MODEL_SIZES = {
    "nano": dict(d_model=24, num_layers=2, num_heads=2, mlp_dim=96),  # 14,760
    "micro": dict(d_model=48, num_layers=2, num_heads=4, mlp_dim=192),  # 58,320
    "tiny": dict(d_model=64, num_layers=4, num_heads=4, mlp_dim=256),  # 202,560
    "small": dict(d_model=128, num_layers=2, num_heads=4, mlp_dim=512),  # 411,520
    "medium": dict(d_model=256, num_layers=4, num_heads=8, mlp_dim=1024),  # 3,218,688
    "large": dict(d_model=384, num_layers=6, num_heads=8, mlp_dim=1536),  # 10,780,800
    "xl": dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072),  # 85,589,760
    "xxl": dict(d_model=1024, num_layers=16, num_heads=16, mlp_dim=4096),  # 202,490,880
}

# Run recipes (steps, batch, learning rate, data size). "demo": the README's ≤ 10-minute CPU run (chain:
# gap_closed_joint 0.959 in 5 min on 2 cores); "long": the ≤ 60-minute CPU run (chain: gap_closed_joint 0.971 in
# 36 minutes on shared cores; README Results).
RUNS = {
    "demo": dict(size="small", num_steps=800, batch_size=64, learning_rate=2e-3, warmup_steps=100,
                 num_train_users=100_000),
    "long": dict(size="small", num_steps=3000, batch_size=64, learning_rate=2e-3, warmup_steps=300,
                 num_train_users=300_000),
}


def load_file(path: str, what: str = "config"):
  """The Python file at `path` as a module, loaded by its path as ml_collections.config_flags loads `--config`
  (config and sweep files need not be on sys.path). `what` names the file in the error."""
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def from_file(spec: str) -> ml_collections.ConfigDict:
  """"PATH[:ARG]" (as gpt-ads-train's --config takes it) -> PATH's get_config(ARG or None)."""
  path, _, arg = spec.partition(":")
  return load_file(path).get_config(arg or None)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses the text after `config.py:` — comma-separated `key=value` pairs or bare words.

  A bare word is a model size (`small`), a run recipe (`long`) or a boolean flag set to True (`runlocal`).
  Values are converted to the type of the default. Example: `configs/default.py:size=large,run=long`.
  """
  out = ml_collections.ConfigDict(defaults)
  for token in filter(None, (arg or "").split(",")):
    if "=" in token:
      key, value = token.split("=", 1)
    elif token in MODEL_SIZES:
      key, value = "size", token
    elif token in RUNS:
      key, value = "run", token
    else:
      key, value = token, "True"
    if key not in out:
      raise ValueError(f"config argument {token!r}: unknown key {key!r}; known: {sorted(out)}, "
                       f"sizes {sorted(MODEL_SIZES)}, runs {sorted(RUNS)}")
    default = out[key]
    if isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif default is not None:
      value = type(default)(value)
    out[key] = value
  if out.get("size") and out.size not in MODEL_SIZES:
    raise ValueError(f"config argument size={out.size!r}: choose one of {sorted(MODEL_SIZES)}")
  if out.get("run") and out.run not in RUNS:
    raise ValueError(f"config argument run={out.run!r}: choose one of {sorted(RUNS)}")
  return out


def override(config, key: str, value, *, parse: bool = False) -> None:
  """Sets the dotted `key` ("train.learning_rate") of `config` to `value`; a key the config does not have is a
  one-line ValueError. `parse`: `value` is a command-line string, converted to the type of the current value."""
  *path, leaf = key.split(".")
  node = config
  for part in path:
    if part not in node:
      raise ValueError(f"{key}: the config has no key {key!r}")
    node = node[part]
  if leaf not in node:
    raise ValueError(f"{key}: the config has no key {key!r}")
  if parse:
    old = node[leaf]
    value = value.lower() in ("1", "true") if isinstance(old, bool) else type(old)(value)
  node[leaf] = value


def option(train_config, key: str):
  """config.train.<key>, or its default (OPTIONAL_TRAIN) when the config leaves it out."""
  return train_config.get(key, OPTIONAL_TRAIN[key])


def _unknown_keys(config) -> list[str]:
  out = []
  for section, known in KNOWN_KEYS.items():
    node = config
    for part in filter(None, section.split(".")):
      node = node.get(part) if hasattr(node, "get") else None
    if hasattr(node, "keys"):
      out += [f"config.{section + '.' if section else ''}{k}" for k in node.keys() if k not in known]
  return out


def validate(config) -> None:
  """Cheap checks that would otherwise fail (or silently mislead) after compilation or hours of training."""
  unknown = _unknown_keys(config)
  if unknown:
    import difflib
    key = unknown[0]
    section, _, name = key.removeprefix("config.").rpartition(".")
    close = difflib.get_close_matches(name, KNOWN_KEYS[section], n=1)
    raise ValueError(f"unknown config key(s) {', '.join(unknown)}"
                     + (f" (did you mean {key.rsplit('.', 1)[0]}.{close[0]}?)" if close else "")
                     + "; remove them (a new key must also be added to gpt_ads.config_lib.KNOWN_KEYS)")
  t = config.train
  if t.num_steps < 1:
    raise ValueError(f"config.train.num_steps={t.num_steps} must be >= 1")
  if t.batch_size < 1:
    raise ValueError(f"config.train.batch_size={t.batch_size} must be >= 1")
  if t.grad_accum_steps < 1 or t.batch_size % t.grad_accum_steps:
    raise ValueError(f"config.train.batch_size={t.batch_size} must be divisible by "
                     f"config.train.grad_accum_steps={t.grad_accum_steps}")
  if t.log_every < 1 or t.checkpoint_every < 1:
    raise ValueError("config.train.log_every and config.train.checkpoint_every must be >= 1")
  if t.keep_checkpoints < 1:
    raise ValueError(f"config.train.keep_checkpoints={t.keep_checkpoints} must be >= 1 (2 or more keeps a "
                     "fallback when the newest checkpoint is damaged)")
  if option(t, "on_nonfinite") not in NONFINITE_MODES:
    raise ValueError(f"config.train.on_nonfinite={t.on_nonfinite!r} must be one of {list(NONFINITE_MODES)}")
  if option(t, "max_nonfinite_skips") < 0:
    raise ValueError(f"config.train.max_nonfinite_skips={t.max_nonfinite_skips} must be >= 0")
  if not option(t, "preemption_grace_seconds") > 0:
    raise ValueError(f"config.train.preemption_grace_seconds={t.preemption_grace_seconds} must be > 0 (the "
                     "seconds between SIGTERM and the scheduler's SIGKILL, less a margin)")
  if option(t, "sparse_update_min_vocab") < 0:
    raise ValueError(f"config.train.sparse_update_min_vocab={t.sparse_update_min_vocab} must be >= 0 (0 = dense "
                     "updates; > 0: row-sparse AdamW for sampled features with at least that many ids)")
  if t.init_output_bias not in ("log_prior", "zeros"):
    raise ValueError(f"config.train.init_output_bias={t.init_output_bias!r} must be 'log_prior' or 'zeros'")
  if config.model.max_len < 2:
    raise ValueError(f"config.model.max_len={config.model.max_len} must be >= 2 (one event predicts the next)")
  d = config.data
  if d.packing_bins < 0 or d.read_threads < 1 or d.num_workers < 0 or d.num_shards < 0:
    raise ValueError("config.data.packing_bins, num_shards and num_workers must be >= 0, read_threads >= 1")
  unknown = sorted(set(config.schema.defaults) - set(features.MODEL_SIDE_KEYS))
  if unknown:
    raise ValueError(f"config.schema.defaults has unknown keys {unknown}; allowed: "
                     f"{', '.join(features.MODEL_SIDE_KEYS)}")
  if config.eval.vocab_chunk < 1:
    raise ValueError("config.eval.vocab_chunk must be >= 1")
  ModelConfig.from_config(config.model)  # raises on a bad model setting
  if not config.data.dir:  # generated data: the config is the whole schema (a data set decides its own)
    check_schema_fits(features.Schema.from_config(config.schema.features), config)  # raises on a bad feature


def check_batch(config, data_parallel: int) -> None:
  t = config.train
  if (t.batch_size // t.grad_accum_steps) % data_parallel:
    raise ValueError(f"config.train.batch_size={t.batch_size} (per micro-batch "
                     f"{t.batch_size // t.grad_accum_steps}) must be divisible by the {data_parallel}-way data "
                     "parallelism of config.mesh")
  if config.eval.batch_size % data_parallel:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be divisible by the "
                     f"{data_parallel}-way data parallelism of config.mesh")


def check_schema_fits(schema: features.Schema, config) -> None:
  """model.max_len against the features: a copy term over k lags needs windows longer than k."""
  for f in schema:
    if f.copy_lags and f.copy_lags >= config.model.max_len:
      raise ValueError(f"config.model.max_len={config.model.max_len} is too small for "
                       f"config.schema.features.{f.name}.copy_lags={f.copy_lags}; raise max_len above it or lower "
                       "copy_lags")

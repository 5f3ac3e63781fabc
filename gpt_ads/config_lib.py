"""Config helpers: preset arguments, model-size presets, run recipes, and validation before any compute."""

import os
import tempfile

import ml_collections

from gpt_ads import features
from gpt_ads.model.config import ModelConfig

# Named model sizes, with their non-embedding parameters (≈ 12 L d², plus norms, biases and head projections)
# on the default schema; `tests/config_test.py` checks the range. nano..large run on a CPU; xl / xxl are the study's
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

# Run recipes (steps, batch, learning rate, data size). "demo": the README's ≤ 10-minute CPU run (gap_closed
# 0.961 in 7 min 21 s on 2 cores); "long": the ≤ 60-minute CPU run (gap_closed 0.972 in 30 minutes; README Results).
RUNS = {
    "demo": dict(size="small", num_steps=800, batch_size=64, learning_rate=2e-3, warmup_steps=100,
                 num_train_users=100_000),
    "long": dict(size="small", num_steps=3000, batch_size=64, learning_rate=2e-3, warmup_steps=300,
                 num_train_users=300_000),
}


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


def validate(config) -> None:
  """Cheap checks that would otherwise fail (or silently mislead) after compilation or hours of training."""
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
    features.Schema.from_config(config.schema.features)  # raises on a bad feature


def check_batch(config, data_parallel: int) -> None:
  t = config.train
  if (t.batch_size // t.grad_accum_steps) % data_parallel:
    raise ValueError(f"config.train.batch_size={t.batch_size} (per micro-batch "
                     f"{t.batch_size // t.grad_accum_steps}) must be divisible by the {data_parallel}-way data "
                     "parallelism of config.mesh")
  if config.eval.batch_size % data_parallel:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be divisible by the "
                     f"{data_parallel}-way data parallelism of config.mesh")


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

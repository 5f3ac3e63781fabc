"""Test setup: 8 emulated CPU devices (set before jax is imported) and tiny configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from configs import default as default_config  # noqa: E402

# Identical programs compiled by different tests (each run builds its own jit) are compiled once.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="gpt_ads_test_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def tiny_config(**overrides):
  """The default config shrunk to seconds: a nano model on a small generated process."""
  c = default_config.get_config("nano")
  syn = c.data.synthetic
  syn.num_ads, syn.num_ad_categories, syn.min_len, syn.max_len = 300, 10, 4, 16
  c.schema.features.ad_id.num_negatives = 64
  c.data.num_train_users, c.data.num_val_users, c.data.num_test_users = 400, 64, 128
  c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 6, 16, 2
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 2, 4, 3
  c.eval.batch_size, c.eval.vocab_chunk = 32, 128
  c.mesh.data = -1
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.fixture
def tiny():
  return tiny_config()

"""Test setup: 8 emulated CPU devices (set before jax is imported) and tiny configs."""

import os

# The XLA flags of this process and of every process a test starts: the caller's own (e.g.
# --xla_cpu_max_isa=AVX2, BUILD_NOTES "How to run"), and, unless the caller chose an optimization level, LLVM at
# -O0 without its expensive passes. The suite's programs are tiny, so its time is mostly XLA compilation: these
# two flags take ~45% off its CPU time. The float semantics are the same at every level (no fast-math either
# way); .ci/run's second pass runs at XLA's default level. The 8-device count is this process's only.
FAST_COMPILE = ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
_caller = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
if not any(f.startswith("--xla_backend_optimization_level") for f in _caller):
  _caller += [f for f in FAST_COMPILE if f not in _caller]
TEST_XLA_FLAGS = " ".join(_caller)
os.environ["XLA_FLAGS"] = (TEST_XLA_FLAGS + " --xla_force_host_platform_device_count=8").strip()

import fcntl  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from configs import default as default_config  # noqa: E402
from gpt_ads import config_lib  # noqa: E402

# Identical programs compiled by different tests (each run builds its own jit) are compiled once: one cache per
# test session, made by the process pytest was started in (which loads this file before it starts any
# pytest-xdist worker, and removes the cache at the end) and shared by the workers and the processes the tests
# start, through the environment. Entries are keyed by program, jax version and XLA flags.
_OWN_CACHE = "GPT_ADS_TEST_XLA_CACHE" not in os.environ
if _OWN_CACHE:
  os.environ["GPT_ADS_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="gpt_ads_test_xla_cache_")
_CACHE_DIR = os.environ["GPT_ADS_TEST_XLA_CACHE"]
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


# The default config shrunk to seconds: a nano model on a small generated process. Dotted keys, so the same
# settings can be passed to the command line (`tiny_flags`) for tests that start processes.
TINY = {
    "data.synthetic.num_ads": 300, "data.synthetic.num_ad_categories": 10, "data.synthetic.min_len": 4,
    "data.synthetic.max_len": 16, "schema.features.ad_id.num_negatives": 64,
    "data.num_train_users": 400, "data.num_val_users": 64, "data.num_test_users": 128,
    "train.num_steps": 6, "train.batch_size": 16, "train.warmup_steps": 2,
    "train.log_every": 2, "train.eval_every": 4, "train.checkpoint_every": 3,
    "eval.batch_size": 32, "eval.vocab_chunk": 128, "mesh.data": -1,
    # The study's heads for the mechanism tests (15% faster to compile and run); the chain's own tests, and
    # chain_run (the default's command line), set "chain".
    "model.event_factorization": "independent",
}


def tiny_config(**overrides):
  """get_config("nano") with TINY and then `overrides` ({"a.b": value}) applied (TINY keeps the study's
  independent heads; pass {"model.event_factorization": "chain"} for the default's)."""
  c = default_config.get_config("nano")
  for k, v in {**TINY, **overrides}.items():
    config_lib.override(c, k, v)
  return c


def tiny_flags(**overrides) -> list[str]:
  """The same config as command-line flags for `gpt-ads-train`."""
  return ["--config=configs/default.py:nano"] + [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


@pytest.fixture
def tiny():
  return tiny_config()


def subprocess_env(**extra) -> dict:
  """Environment of a process a test starts (`gpt-ads-train`, `gpt-ads-downstream`, ...): one CPU device, the
  tests' XLA flags (TEST_XLA_FLAGS), and this session's compilation cache (so processes running the same
  program compile it once)."""
  return {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS,
          "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          **extra}


# The trained_run command's overrides (tests/e2e/fault_test.py reruns the same command, interrupted). The study's
# independent factorization, whose heads the API tests recompute by hand; chain_run is the default's.
TRAINED_RUN = {"train.num_steps": 30, "train.eval_every": 0, "schema.features.ad_id.copy_lags": 2}
CHAIN_RUN = {"train.num_steps": 20, "train.eval_every": 0, "train.checkpoint_every": 20,
             "train.sparse_update_min_vocab": 100, "train.learning_rate": 3e-3,
             "model.event_factorization": "chain"}


def _cli_run(tmp_path_factory, name: str, overrides: dict) -> str:
  """Trains the tiny config with `overrides` by the command line, as a user would; returns the workdir.

  Built once per test session: under pytest-xdist the first worker to ask trains it in the session's shared
  temp folder (the workers' common parent) while the others wait on a file lock, then all read it."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
  workdir, done = shared / name, shared / f"{name}.done"
  with open(shared / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # a build that failed in another worker
      proc = subprocess.run([sys.executable, "-m", "gpt_ads.cli.train", *tiny_flags(**overrides),
                             f"--workdir={workdir}"], cwd=root, capture_output=True, text=True, timeout=600,
                            env=subprocess_env())
      assert proc.returncode == 0, proc.stderr[-3000:]
      done.touch()
  return str(workdir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """A tiny run trained once by the command line (30 steps, ad_id copy term over 2 lags, independent heads),
  shared by the tests of what comes after training (public API, export, downstream, README example) and, as
  the uninterrupted reference, by the kill / resume test; returns its workdir."""
  return _cli_run(tmp_path_factory, "trained_run", TRAINED_RUN)


@pytest.fixture(scope="session")
def chain_run(tmp_path_factory):
  """A tiny run of the default (chain) factorization by the command line: packed rows, row-sparse ad_id."""
  return _cli_run(tmp_path_factory, "chain_run", CHAIN_RUN)

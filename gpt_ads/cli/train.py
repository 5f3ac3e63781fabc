"""`gpt-ads-train --config=configs/default.py[:args] --workdir=DIR [--config.a.b=value ...] [--dry_run]`."""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gpt_ads.cli import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, eval.json.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Compile the train step for the configured mesh, print the per-device memory plan "
    "(parameters, optimizer state, activations; also WORKDIR/memory_plan.json) and exit without training.")
# Multi-host (JAX's own runtime). Used when any is set or GPT_ADS_DISTRIBUTED=1; unset values come from
# JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else JAX's cluster detection (TPU, SLURM).
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (jax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (jax.distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1 (jax.distributed).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_seconds", 45,
                                  "A process that misses heartbeats this long ends the whole job with an error.")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed(jax) -> None:
  env = os.environ

  def pick(flag, var):
    if flag.value is not None:
      return flag.value
    return int(env[var]) if env.get(var) else None

  explicit = any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID))
  if not explicit and env.get("GPT_ADS_DISTRIBUTED") != "1":
    return
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value or env.get("JAX_COORDINATOR_ADDRESS") or None,
                             num_processes=pick(_NUM_PROCESSES, "JAX_NUM_PROCESSES"),
                             process_id=pick(_PROCESS_ID, "JAX_PROCESS_ID"),
                             heartbeat_timeout_seconds=_HEARTBEAT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console to progress
    logging.set_verbosity(logging.WARNING)
  import jax  # after flag parsing, so that --xla / env settings apply
  _initialize_distributed(jax)
  from gpt_ads.training import train  # imports jax: after the flags and jax.distributed are set up
  try:
    if _DRY_RUN.value:
      from gpt_ads.training import memory_plan  # only for --dry_run
      memory_plan.run(_CONFIG.value, _WORKDIR.value)
      _shutdown_distributed(jax)
      return
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FloatingPointError, OSError) as e:  # bad config / data / workdir, NaN, disk
    _fail(str(e))
  if result.get("preempted"):  # SIGTERM: the checkpoint is complete; the scheduler may restart the same command
    if jax.process_index() == 0:
      print(f"preempted: checkpoint {result['step']} saved; run the same command to continue", file=sys.stderr)
    _shutdown_distributed(jax)
    return
  if jax.process_index() == 0:
    line = f"test_loss={result['test_loss']:.4f} nats/event"
    if "gap_closed" in result:
      line += (f"  bayes_factorized={result['bayes_factorized_loss']:.4f}  bayes_joint={result['bayes_joint_loss']:.4f}"
               f"  unigram={result['unigram_loss']:.4f}  gap_closed={result['gap_closed']:.3f}"
               f"  gap_closed_joint={result['gap_closed_joint']:.3f}  ({result['event_factorization']})")
    print(line)
  _shutdown_distributed(jax)


def _shutdown_distributed(jax) -> None:
  """Leaves JAX's runtime through its shutdown barrier now, while every process is still whole. Left to
  Python's exit hooks, process 0 may tear down the coordination service while a peer is still leaving, and the
  peer fails with "Shutdown barrier has failed" (seen under load in CI). Not called on errors: a failed process
  exits at once, and its peers learn of it from the missed heartbeats."""
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()


def _fail(message: str) -> None:
  errors.fail("gpt-ads-train", message)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config-file and --config.* override errors (an unknown key, a bad value, a failing
  get_config) as one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:  # also config loading / overrides
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    if "Traceback (most recent call last)" in text:  # get_config raised: its own message is the last line
      text = [line for line in text.splitlines() if line.strip()][-1]
    typo = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
    if typo:
      given = next((a.split("=")[0] for a in argv if a.startswith("--config.") and typo[2] in a), typo[2])
      _fail(f"{given}: unknown config key {typo[2]!r}; did you mean {typo[1]!r}?")
    if isinstance(e, (AttributeError, KeyError)):
      given = next((a.split("=")[0] for a in argv if a.startswith("--config.") and text.strip("'\"") in a), "")
      _fail(f"{given or '--config'}: unknown config key {text.strip(chr(39) + chr(34))!r}; check the key names")
    _fail(f"{text}; check --config and the --config.* overrides")


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

"""`gpt-ads-train --config=configs/default.py[:args] --workdir=DIR [--config.a.b=value ...]`."""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, eval.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console to progress
    logging.set_verbosity(logging.WARNING)
  import jax  # after flag parsing, so that --xla / env settings apply
  if os.environ.get("GPT_ADS_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  from gpt_ads import train
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FloatingPointError) as e:
    logging.error("%s", e)
    print(f"gpt-ads-train: error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    line = f"test_loss={result['test_loss']:.4f} nats/event"
    if "gap_closed" in result:
      line += (f"  bayes_factorized={result['bayes_factorized_loss']:.4f}  unigram={result['unigram_loss']:.4f}"
               f"  gap_closed={result['gap_closed']:.3f}")
    print(line)


def run():
  app.run(main)


if __name__ == "__main__":
  run()

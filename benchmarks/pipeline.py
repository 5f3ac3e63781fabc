"""Input pipeline speed against the trainer, and packing against padding.

    python benchmarks/pipeline.py --workdir=/tmp/gpt_ads_pipeline_bench --out=/tmp/pipeline.json \
        [--ml1m_dir=/work/shared/data] [--seconds=20] [--trainer_steps=150]

1. Delivery: the default config's training pipeline (the generated demo data set written as a prepared data set,
   read with tfds.data_source -> grain -> FirstFitPackIterDataset -> batches), drained as fast as possible for
   --seconds after a warm-up: real (non-padding) events per second, rows per second, fill.
2. Consumption: the default trainer itself (`train_and_evaluate` with the default config, --trainer_steps steps,
   no evaluation) on the same data: its measured events/s. ratio = delivery / consumption (the issue asks >= 10).
3. Packing vs padding on ML-1M lengths (when --ml1m_dir holds ml-1m; max_len 200, batch 128): for both, the
   fraction of non-pad positions and useful events per second delivered.
Writes one JSON object to --out and prints a table.
"""

import json
import os
import shutil
import time

from absl import app, flags, logging

from gpt_ads import config_lib
from gpt_ads.data import datasets, movielens, pipeline, store
from gpt_ads.training import train

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/gpt_ads_pipeline_bench", "scratch directory (data sets, run)")
_OUT = flags.DEFINE_string("out", None, "JSON file to write", required=True)
_SECONDS = flags.DEFINE_float("seconds", 20.0, "seconds to drain each pipeline for")
_TRAINER_STEPS = flags.DEFINE_integer("trainer_steps", 150, "training steps to time the default trainer over")
_ML1M_DIR = flags.DEFINE_string("ml1m_dir", movielens.default_data_dir(),
                                "folder holding ml-1m/ (skipped when absent)")


def drain(source, *, names, max_len, batch, pack, seconds, warmup_batches=5) -> dict:
  """Batches per second from the training pipeline over `source`: events/s, rows/s, fill."""
  it = pipeline.TrainIterator(source, names=names, max_len=max_len, global_batch=batch, seed=0, pack=pack)
  for _ in range(warmup_batches):
    next(it)
  events = rows = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    b = next(it)
    events += pipeline.num_events(b)
    rows += b["segment_ids"].shape[0]
  dt = time.perf_counter() - t0
  fill = events / (rows * max_len)
  # What a trainer gets per step (its step time does not depend on the fill): useful events per batch.
  return {"pack": pack, "events_per_sec": events / dt, "rows_per_sec": rows / dt, "fill": fill,
          "useful_events_per_batch": fill * batch * max_len, "max_len": max_len, "batch": batch, "seconds": dt}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  os.makedirs(_WORKDIR.value, exist_ok=True)
  result = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count()}

  # 1-2: the default config's data and trainer.
  config = config_lib.from_file(_DEFAULT_CONFIG)
  run_dir = os.path.join(_WORKDIR.value, "demo_run")
  data = datasets.load(config, run_dir)
  names, max_len, batch = data.schema.names, config.model.max_len, config.train.batch_size
  result["delivery"] = drain(data.train, names=names, max_len=max_len, batch=batch, pack=True,
                             seconds=_SECONDS.value)
  print(f"delivery (packed, default data): {result['delivery']['events_per_sec']:,.0f} events/s, "
        f"fill {result['delivery']['fill']:.3f}", flush=True)
  with config.unlocked():
    config.train.num_steps = _TRAINER_STEPS.value
    config.train.eval_every = 0
    config.train.log_every = 25
    config.train.checkpoint_every = 10 ** 9
  for name in os.listdir(run_dir):  # a fresh run each time (the generated data set is kept)
    if name != "generated_data":
      path = os.path.join(run_dir, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  trained = train.train_and_evaluate(config, run_dir)
  result["trainer_events_per_sec"] = trained["events_per_sec"]
  result["delivery_over_consumption"] = result["delivery"]["events_per_sec"] / trained["events_per_sec"]
  print(f"trainer consumes {trained['events_per_sec']:,.0f} events/s -> ratio "
        f"{result['delivery_over_consumption']:.1f}x", flush=True)

  # 3: packing vs padding on ML-1M lengths.
  ml1m = os.path.join(_ML1M_DIR.value, "ml-1m")
  if os.path.isdir(ml1m):
    out = os.path.join(_WORKDIR.value, "ml1m_prepared")
    prepared = store.open_dir(out) if os.path.exists(out) else None
    if prepared is None:
      movielens.build("ml-1m", _ML1M_DIR.value, out)
      prepared = store.open_dir(out)
    src = prepared.source("train")
    rows = {}
    for pack in (True, False):
      rows["packed" if pack else "padded"] = drain(src, names=prepared.feature_names, max_len=200, batch=128,
                                                   pack=pack, seconds=_SECONDS.value)
    result["ml1m_packing"] = rows
    print("ML-1M lengths, max_len 200, batch 128:")
    for k, v in rows.items():
      print(f"  {k:7s} fill {v['fill']:.3f}  useful events per batch {v['useful_events_per_batch']:,.0f}  "
            f"delivered events/s {v['events_per_sec']:,.0f}")
  else:
    print(f"ML-1M packing comparison skipped: {ml1m} not found")

  with open(_OUT.value, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)

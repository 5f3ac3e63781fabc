"""The CPU-scale reproduction of the study on MovieLens-1M (a real sequence data set), in one command.

    python -m gpt_ads.data.movielens --dataset=ml-1m --data_dir=/work/shared/data --output=/tmp/ml1m
    gpt-ads-sweep --sweep=configs/sweeps/ml1m.py:data=/tmp/ml1m --workdir=/tmp/sweep_ml1m --title="ML-1M sweep"

The same four parts as configs/sweeps/cpu.py, on configs/ml1m.py (the item id alone, exact softmax over the
3,416 items; no Bayes bound exists for real data, so the fits are on test loss, with an L_inf floor) with short
windows (max_len 50) and batch 64 so that the 18 runs fit in about an hour on 2 cores:
  sizes     the 7-size transformer ladder of configs/sweeps/cpu.py, `steps` steps each;
  lstm      4 LSTM backbones at the same budget of steps: transformer-vs-LSTM slopes with intervals;
  data      two ladder sizes trained on the first 10% and 30% of the 6,040 users (all users are tested);
  compute   three sizes at one training-FLOPs budget.

Argument keys: data (the prepared ml-1m directory, required), steps (default 400), budget (default 2e12 FLOPs).
"""

import os
import runpy

from gpt_ads import config_lib
from gpt_ads.scaling.sweep import grid

_CPU = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu.py"))  # the shared ladder
LADDER, DATA, COMPUTE = _CPU["LADDER"], _CPU["DATA"], _CPU["COMPUTE"]

LSTM = ("d16L1", "d24L1", "d32L2", "d64L4")
USERS = 6040  # ml-1m's training users (every user is in every split: leave-one-out)


def _runs(names, *, prefix="", **overrides) -> list[dict]:
  out = []
  for name in names:
    run = grid(config="configs/ml1m.py", features="item",
               overrides={**{f"model.{k}": v for k, v in LADDER[name].items()}, **overrides})[0]
    run["name"] = prefix + name
    out.append(run)
  return out


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, data="", steps=400, budget=2e12)
  if not arg.data:
    raise ValueError("configs/sweeps/ml1m.py needs data=<prepared ml-1m directory> (python -m "
                     "gpt_ads.data.movielens --dataset=ml-1m --output=DIR)")
  common = {"data.dir": arg.data, "data.max_train_users": USERS, "schema.features.item.loss": "softmax",
            "model.max_len": 50, "train.batch_size": 64,
            "train.num_steps": arg.steps, "train.warmup_steps": 50, "train.eval_every": 0,
            "train.checkpoint_every": 10_000, "train.keep_checkpoints": 1}
  runs = _runs(LADDER, **common)
  runs += _runs(LSTM, prefix="lstm_", **common, **{"model.backbone": "lstm"})
  for frac in (10, 30):
    runs += _runs(DATA, prefix=f"users{frac}pct_", **{**common, "data.max_train_users": USERS * frac // 100})
  for name in COMPUTE:
    run = grid(config="configs/ml1m.py", features="item", flops_budget=[arg.budget],
               overrides={**{f"model.{k}": v for k, v in LADDER[name].items()}, **common})[0]
    run["name"] = f"flops{arg.budget:.0e}_{name}".replace("+", "")
    runs.append(run)
  return runs

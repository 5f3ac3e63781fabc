"""Model-size sweep on generated data: the study's L(N) at CPU scale (nano .. small, same data and recipe).

    gpt-ads-sweep --sweep=configs/sweeps/sizes.py --workdir=/tmp/sweep_sizes
    gpt-ads-sweep --sweep=configs/sweeps/sizes.py:steps=200 --workdir=/tmp/sweep_quick

Argument keys: steps (per run, default 1000), users (training users, default 100000), factorization
(model.event_factorization; default "independent", the study's objective; "chain" for the exact joint).
"""

from gpt_ads import config_lib
from gpt_ads.scaling.sweep import grid


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, steps=1000, users=100_000, factorization="independent")
  return grid(config="configs/default.py", size=["nano", "micro", "tiny", "small"],
              overrides={"train.num_steps": arg.steps, "data.num_train_users": arg.users,
                         "train.eval_every": 0, "model.event_factorization": arg.factorization})

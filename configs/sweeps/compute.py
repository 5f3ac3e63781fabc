"""Fixed-compute sweep on generated data: at each FLOPs budget, trade model size against steps (the study's
configuration tables at CPU scale), plus a data sweep for the smallest and largest model.

    gpt-ads-sweep --sweep=configs/sweeps/compute.py --workdir=/tmp/sweep_compute
    gpt-ads-sweep --sweep=configs/sweeps/compute.py:budgets=3e12/1e13 --workdir=/tmp/sweep_compute --print_commands

Argument keys: budgets ('/'-separated training FLOPs; default 1e13/3e13), users (training users, default 100000),
factorization (model.event_factorization; default "independent", the study's objective; "chain" for the joint).
"""

from gpt_ads import config_lib
from gpt_ads.scaling.sweep import grid


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, budgets="1e13/3e13", users=100_000, factorization="independent")
  budgets = [float(b) for b in arg.budgets.split("/")]
  fixed = {"data.num_train_users": arg.users, "train.eval_every": 0, "model.event_factorization": arg.factorization}
  compute = grid(config="configs/default.py", size=["micro", "tiny", "small"], flops_budget=budgets,
                 overrides=fixed)
  data = grid(config="configs/default.py", size=["micro", "small"],
              **{"data.num_train_users": [arg.users // 100, arg.users // 10, arg.users]},
              overrides={"train.eval_every": 0, "model.event_factorization": arg.factorization})
  return compute + data

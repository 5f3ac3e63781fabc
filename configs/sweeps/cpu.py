"""The CPU-scale reproduction of the study on generated data, in one command (about an hour on 2 cores).

    gpt-ads-sweep --sweep=configs/sweeps/cpu.py --workdir=/tmp/sweep_cpu --title="CPU-scale sweep"
    gpt-ads-sweep --sweep=configs/sweeps/cpu.py:steps=50 --workdir=/tmp/sweep_smoke     # a quick smoke test

Four parts, all with the demo recipe (batch 64, lr 2e-3, cosine) and the same generated data:
  sizes     a ladder of 7 transformers, 3.5K .. 807K non-embedding parameters (230x), `steps` steps each:
            L(N) on test loss and on the excess over the exact Bayes bound;
  lstm      3 LSTM backbones over the same budget of steps: the transformer-vs-LSTM slopes;
  data      two ladder sizes on 10% and 30% of the training users: the data each needs for a target loss;
  compute   three sizes at one training-FLOPs budget (steps from gpt_ads.training.accounting): the best size at fixed
            compute.

Argument keys: steps (per size / data run, default 600), users (training users, default 100000), budget (FLOPs of
each compute run, default 3e12), factorization (model.event_factorization; default "independent", the study's
objective, which the parameter counts below are for; "chain" for the exact joint).
"""

from gpt_ads import config_lib
from gpt_ads.scaling.sweep import grid

# name -> model settings. Non-embedding parameters on the default schema in the comments (gpt_ads.training.accounting).
LADDER = {
    "d16L1": dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=64),  # 3,473
    "d24L1": dict(d_model=24, num_layers=1, num_heads=2, mlp_dim=96),  # 7,705
    "d32L2": dict(d_model=32, num_layers=2, num_heads=2, mlp_dim=128),  # 26,113
    "d48L2": dict(d_model=48, num_layers=2, num_heads=4, mlp_dim=192),  # 58,369
    "d64L4": dict(d_model=64, num_layers=4, num_heads=4, mlp_dim=256),  # 202,625
    "d128L2": dict(d_model=128, num_layers=2, num_heads=4, mlp_dim=512),  # 411,649
    "d128L4": dict(d_model=128, num_layers=4, num_heads=4, mlp_dim=512),  # 806,657
}
LSTM = ("d24L1", "d32L2", "d64L4")  # same widths and depths, LSTM cells
DATA = ("d32L2", "d64L4")
COMPUTE = ("d32L2", "d64L4", "d128L2")


def _model(name: str) -> dict:
  return {f"model.{k}": v for k, v in LADDER[name].items()}


def _runs(names, *, prefix="", **overrides) -> list[dict]:
  out = []
  for name in names:
    run = grid(config="configs/default.py", overrides={**_model(name), **overrides})[0]
    run["name"] = prefix + name
    out.append(run)
  return out


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, steps=600, users=100_000, budget=3e12, factorization="independent")
  common = {"train.num_steps": arg.steps, "train.eval_every": 0, "data.num_train_users": arg.users,
            "model.event_factorization": arg.factorization}
  runs = _runs(LADDER, **common)
  runs += _runs(LSTM, prefix="lstm_", **common, **{"model.backbone": "lstm"})
  for frac in (10, 30):
    runs += _runs(DATA, prefix=f"users{frac}pct_", **{**common, "data.num_train_users": arg.users * frac // 100})
  for name in COMPUTE:
    run = grid(config="configs/default.py", flops_budget=[arg.budget],
               overrides={**_model(name), **common})[0]
    run["name"] = f"flops{arg.budget:.0e}_{name}".replace("+", "")
    runs.append(run)
  return runs

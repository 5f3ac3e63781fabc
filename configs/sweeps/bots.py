"""Bot detection by model size and sequence length (the study's "larger models detect bots with shorter sequences
significantly better"), on generated data with four kinds of bots.

    gpt-ads-sweep --sweep=configs/sweeps/bots.py --workdir=/tmp/sweep_bots \
        --downstream=is_bot:anomaly,is_bot:probe --downstream_max_users=20000 --title="Bot detection by size"

Four transformer sizes (nano .. small), the demo recipe for `steps` steps each, evaluated on `test_users` test
users (>= 20,000, so that recall at 1% FPR rests on >= 150 negatives above the threshold). REPORT.md then has the
recall at 1% / 5% FPR by bucket of predicted-event count for every size, beside the Bayes-optimal detector's,
with bootstrap 95% intervals (gpt_ads.scaling.report).

Argument keys: steps (per run, default 600), users (training users, default 50000), test_users (default 20000),
factorization (model.event_factorization; default "independent", the study's objective; "chain" for the joint).
"""

from gpt_ads import config_lib
from gpt_ads.scaling.sweep import grid


def get_sweep(arg=None):
  arg = config_lib.parse_arg(arg, steps=600, users=50_000, test_users=20_000, factorization="independent")
  return grid(config="configs/default.py", size=["nano", "micro", "tiny", "small"],
              overrides={"train.num_steps": arg.steps, "data.num_train_users": arg.users,
                         "data.num_test_users": arg.test_users, "train.eval_every": 0,
                         "model.event_factorization": arg.factorization})

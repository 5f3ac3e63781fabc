"""A CSV ad log with within-event structure the generator does not have: each ad belongs to one campaign.

    python benchmarks/joint_log.py --out=/tmp/camp/log.csv [--users=60000] [--campaigns=250]
    gpt-ads-prepare --input=/tmp/camp/log.csv --user_col=user --time_col=ts \\
        --features=event_type,ad_id,campaign,device --sampled=ad_id --derive_time=gap --output=/tmp/camp/data
    gpt-ads-train --config=configs/default.py --config.data.dir=/tmp/camp/data \\
        --config.model.event_factorization=chain|independent --workdir=/tmp/camp/chain|independent

Users come from gpt_ads.data.synthetic (default process, seed 3); every event gets `campaign` = a fixed random
campaign of its ad (so campaign is a function of ad_id inside the event, as campaign / advertiser / placement are
in real logs) and a Unix timestamp whose gaps follow the generated time-gap buckets. A factorized model cannot
learn the campaign from the event's own ad; the chain rule can (BUILD_NOTES "Event factorization").
"""

import csv
import os

import numpy as np
from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "CSV file to write.", required=True)
_USERS = flags.DEFINE_integer("users", 60_000, "Users to generate.")
_CAMPAIGNS = flags.DEFINE_integer("campaigns", 250, "Campaigns the ads are spread over.")


def main(argv):
  del argv
  from gpt_ads.data import synthetic
  users = synthetic.Process(synthetic.default_config()).sample(_USERS.value, seed=3)
  rng = np.random.default_rng(7)
  campaign_of_ad = rng.integers(0, _CAMPAIGNS.value, users.vocab_size("ad_id"))
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + ".tmp", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["user", "ts", "event_type", "ad_id", "campaign", "device"])
    for i in range(len(users)):
      t = 1_700_000_000 + int(rng.integers(0, 10**6))
      for j in range(users.lengths[i]):
        t += 7 * 2 ** int(users.features["time_gap"][i, j])
        ad = int(users.features["ad_id"][i, j])
        w.writerow([f"u{i}", t, int(users.features["event_type"][i, j]), ad, f"c{campaign_of_ad[ad]}",
                    int(users.features["device"][i, j])])
  os.replace(_OUT.value + ".tmp", _OUT.value)
  print(f"{len(users):,} users, {int(users.lengths.sum()):,} events -> {_OUT.value}")


if __name__ == "__main__":
  app.run(main)

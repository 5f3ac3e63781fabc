"""Ingestion benchmark: generate an ad-event CSV, run gpt-ads-prepare on it, record time and peak memory.

  python benchmarks/ingest.py --events=5000000 --out=FILE.json [--workdir=DIR] [--keep]

The CSV (user_id, timestamp, ad_id, campaign, device, event_type) is generated vectorized: ~50 events per user
in random time order over 30 days, ad_id Zipf(1.05) over 1M ads (ids shuffled), campaign = ad's block of 100,
device and event_type from small fixed distributions. gpt-ads-prepare runs as a child process with
--sampled=ad_id --derive_time=gap,hour,weekday; its wall time and peak RSS (getrusage(RUSAGE_CHILDREN)) go to
--out as JSON, with the time spent before it starts writing the data set (reading + encoding) split out.

Shared hosts change speed by up to 2x within a session (CPU steal, a page cache that the VM reclaims), so the
JSON also holds `machine.reference_sort_seconds`: a fixed numpy sort (10M float64) timed just before and just
after gpt-ads-prepare. Compare runs by it, not by wall time alone.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

NUM_ADS, EVENTS_PER_USER, CHUNK = 1_000_000, 50, 1_000_000
DEVICES, DEVICE_P = ["mobile", "desktop", "tablet", "ctv"], [0.6, 0.3, 0.08, 0.02]
EVENT_TYPES, EVENT_P = ["impression", "click", "conversion"], [0.9, 0.09, 0.01]


def _strings(prefix: str, numbers: np.ndarray) -> pa.Array:
  return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def generate(path: str, events: int, seed: int = 0) -> int:
  """Writes `events` rows to `path`; returns the number of users."""
  rng = np.random.default_rng(seed)
  users = max(1, events // EVENTS_PER_USER)
  cdf = np.cumsum(1.0 / np.arange(1, NUM_ADS + 1) ** 1.05)
  cdf /= cdf[-1]
  ad_perm = rng.permutation(NUM_ADS)
  t0 = 1_704_067_200  # 2024-01-01
  schema = pa.schema([(n, pa.string()) for n in ("user_id", "timestamp", "ad_id", "campaign", "device",
                                                 "event_type")])
  with pacsv.CSVWriter(path, schema) as writer:
    for start in range(0, events, CHUNK):
      n = min(CHUNK, events - start)
      ad = ad_perm[np.minimum(np.searchsorted(cdf, rng.random(n)), NUM_ADS - 1)]
      writer.write(pa.record_batch([
          _strings("u", rng.integers(users, size=n)),
          pc.cast(pa.array(t0 + rng.integers(30 * 86400, size=n)), pa.string()),
          _strings("ad", ad),
          _strings("c", ad // 100),
          pa.array(np.array(DEVICES)[rng.choice(len(DEVICES), n, p=DEVICE_P)]),
          pa.array(np.array(EVENT_TYPES)[rng.choice(len(EVENT_TYPES), n, p=EVENT_P)]),
      ], schema=schema))
  return users


def reference_seconds() -> float:
  """Seconds of np.sort over a fixed 10M float64 array (best of 3): the host's speed at this moment."""
  x = np.random.default_rng(0).random(10_000_000)
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    np.sort(x)
    best = min(best, time.perf_counter() - start)
  return round(best, 3)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--events", type=int, default=5_000_000)
  parser.add_argument("--out", required=True, help="JSON file with the measurements")
  parser.add_argument("--workdir", default=None, help="where the CSV and the data set go (default: a temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the CSV and the data set")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="gpt_ads_ingest_")
  os.makedirs(workdir, exist_ok=True)
  csv_path, out_dir = os.path.join(workdir, "events.csv"), os.path.join(workdir, "prepared")
  try:
    start = time.time()
    users = generate(csv_path, args.events)
    gen_seconds = time.time() - start
    print(f"generated {args.events:,} events / {users:,} users ({os.path.getsize(csv_path):,} bytes) in "
          f"{gen_seconds:.1f}s", flush=True)
    script = shutil.which("gpt-ads-prepare", path=os.path.dirname(sys.executable))
    cmd = ([script] if script else [sys.executable, "-m", "gpt_ads.cli.prepare"]) + [
        f"--input={csv_path}", "--user_col=user_id", "--time_col=timestamp",
        "--features=ad_id,campaign,device,event_type", "--sampled=ad_id", "--derive_time=gap,hour,weekday",
        f"--output={out_dir}", "--overwrite"]
    reference_before = reference_seconds()
    start, write_start, lines = time.time(), None, []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as child:
      for line in child.stdout:
        print("  " + line.rstrip(), flush=True)
        lines.append(line.rstrip())
        if line.startswith("writing ") and write_start is None:
          write_start = time.time()
    wall = time.time() - start
    reference_after = reference_seconds()
    if child.returncode != 0:
      sys.exit(f"gpt-ads-prepare failed with exit status {child.returncode}")
    with open(os.path.join(out_dir, "schema.json")) as fh:
      meta = json.load(fh)
    result = {
        "engine": "local", "events": args.events, "users": users, "csv_bytes": os.path.getsize(csv_path),
        "generate_seconds": round(gen_seconds, 2), "wall_seconds": round(wall, 2),
        "events_per_sec": round(args.events / wall),
        "read_encode_seconds": round(write_start - start, 2) if write_start else None,
        "write_seconds": round(time.time() - write_start, 2) if write_start else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,  # Linux: KiB
        "output_bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs),
        "splits": meta["splits"], "vocab_sizes": {f["name"]: f["vocab_size"] for f in meta["features"]},
        "summary": lines[-1] if lines else "", "command": " ".join(cmd),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pyarrow": pa.__version__,
                    "load_average_1m": os.getloadavg()[0],
                    "reference_sort_seconds": [reference_before, reference_after]},
    }
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
    elif not args.keep:
      for p in (csv_path, out_dir):
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.path.exists(p) and os.remove(p)
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(json.dumps({k: v for k, v in result.items() if k not in ("splits", "summary", "command")}))


if __name__ == "__main__":
  main()

"""Ingestion benchmark: generate an ad-event CSV, run gpt-ads-prepare on it, record time and peak memory.

  python benchmarks/ingest.py --events=5000000 --out=FILE.json [--engines=local,beam] [--workdir=DIR] [--keep]

The CSV (user_id, timestamp, ad_id, campaign, device, event_type) is generated vectorized: ~50 events per user
in random time order over 30 days, ad_id Zipf(1.05) over 1M ads (ids shuffled), campaign = ad's block of 100,
device and event_type from small fixed distributions. gpt-ads-prepare runs as a child process with
--sampled=ad_id --derive_time=gap,hour,weekday, once per engine (`--engines`: local and / or beam, Beam's
DirectRunner with 2 worker processes); wall time and peak RSS (os.wait4) go to --out as JSON, with the time spent
before writing the data set (reading + encoding) split out. The top-level fields are the first engine's; with
two engines `same_output` says whether they wrote the same bytes.

Shared hosts change speed by up to 2x within a session (CPU steal, a page cache that the VM reclaims), so the
JSON also holds `machine.reference_sort_seconds`: a fixed numpy sort (10M float64) timed just before and just
after gpt-ads-prepare. Compare runs by it, not by wall time alone.
"""

import argparse
import json
import os
import platform
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


BEAM_OPTIONS = "--runner=DirectRunner,--direct_num_workers=2,--direct_running_mode=multi_processing"


def run_engine(csv_path: str, out_dir: str, engine: str) -> dict:
  """One gpt-ads-prepare run as a child process: wall time, read / write split, peak RSS (os.wait4: the child
  or the largest process it waited for; Beam's worker processes each have their own)."""
  script = shutil.which("gpt-ads-prepare", path=os.path.dirname(sys.executable))
  cmd = ([script] if script else [sys.executable, "-m", "gpt_ads.cli.prepare"]) + [
      f"--input={csv_path}", "--user_col=user_id", "--time_col=timestamp",
      "--features=ad_id,campaign,device,event_type", "--sampled=ad_id", "--derive_time=gap,hour,weekday",
      f"--output={out_dir}", "--overwrite"] + ([f"--beam_pipeline_options={BEAM_OPTIONS}"] if engine == "beam" else [])
  reference_before = reference_seconds()
  start, write_start, lines = time.time(), None, []
  child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
  for line in child.stdout:
    print("  " + line.rstrip(), flush=True)
    lines.append(line.rstrip())
    if line.startswith("writing ") and write_start is None:
      write_start = time.time()
  _, status, usage = os.wait4(child.pid, 0)
  child.returncode = os.waitstatus_to_exitcode(status)
  wall = time.time() - start
  if child.returncode != 0:
    sys.exit(f"gpt-ads-prepare ({engine}) failed with exit status {child.returncode}")
  return {"engine": engine, "wall_seconds": round(wall, 2),
          "read_encode_seconds": round(write_start - start, 2) if write_start else None,
          "write_seconds": round(time.time() - write_start, 2) if write_start else None,
          "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB
          "output_bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs),
          "summary": lines[-1] if lines else "", "command": " ".join(cmd),
          "reference_sort_seconds": [reference_before, reference_seconds()]}


def same_output(a: str, b: str) -> bool:
  """Whether two prepared data sets hold the same bytes: every record file, and schema.json but its --output."""
  files = lambda d: sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)
  if files(a) != files(b):
    return False
  for name in files(a):
    if name == "schema.json":
      metas = [json.load(open(os.path.join(d, name))) for d in (a, b)]
      for m in metas:
        m["source"]["flags"].pop("output")
      if metas[0] != metas[1]:
        return False
    elif open(os.path.join(a, name), "rb").read() != open(os.path.join(b, name), "rb").read():
      return False
  return True


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--events", type=int, default=5_000_000)
  parser.add_argument("--out", required=True, help="JSON file with the measurements")
  parser.add_argument("--engines", default="local", help="comma-separated: local, beam (Beam's DirectRunner, "
                      "2 worker processes); with both, the JSON says whether they wrote the same bytes")
  parser.add_argument("--workdir", default=None, help="where the CSV and the data set go (default: a temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the CSV and the data set")
  args = parser.parse_args()
  engines = [e.strip() for e in args.engines.split(",") if e.strip()]
  if not engines or set(engines) - {"local", "beam"}:
    sys.exit(f"--engines={args.engines!r}: give local, beam or local,beam")
  workdir = args.workdir or tempfile.mkdtemp(prefix="gpt_ads_ingest_")
  os.makedirs(workdir, exist_ok=True)
  csv_path = os.path.join(workdir, "events.csv")
  outs = {e: os.path.join(workdir, "prepared" if e == "local" else f"prepared_{e}") for e in engines}
  try:
    start = time.time()
    users = generate(csv_path, args.events)
    gen_seconds = time.time() - start
    print(f"generated {args.events:,} events / {users:,} users ({os.path.getsize(csv_path):,} bytes) in "
          f"{gen_seconds:.1f}s", flush=True)
    runs = {e: run_engine(csv_path, outs[e], e) for e in engines}
    with open(os.path.join(outs[engines[0]], "schema.json")) as fh:
      meta = json.load(fh)
    first = runs[engines[0]]
    result = {
        "engine": engines[0], "events": args.events, "users": users, "csv_bytes": os.path.getsize(csv_path),
        "generate_seconds": round(gen_seconds, 2),
        **{k: v for k, v in first.items() if k not in ("engine", "reference_sort_seconds")},
        "events_per_sec": round(args.events / first["wall_seconds"]),
        "splits": meta["splits"], "vocab_sizes": {f["name"]: f["vocab_size"] for f in meta["features"]},
        "engines": {e: {**r, "events_per_sec": round(args.events / r["wall_seconds"])} for e, r in runs.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pyarrow": pa.__version__,
                    "load_average_1m": os.getloadavg()[0],
                    "reference_sort_seconds": first["reference_sort_seconds"]},
    }
    if len(engines) > 1:
      result["same_output"] = same_output(outs[engines[0]], outs[engines[1]])
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
    elif not args.keep:
      for p in (csv_path, *outs.values()):
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.path.exists(p) and os.remove(p)
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(json.dumps({k: v for k, v in result.items() if k not in ("splits", "summary", "command", "engines")}))


if __name__ == "__main__":
  main()

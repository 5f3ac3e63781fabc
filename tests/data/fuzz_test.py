"""Input fuzzing of gpt-ads-prepare: malformed event logs are either handled by the documented policy
(gpt_ads.data.prepare POLICY) or rejected with one line on stderr, exit status 2 and nothing at --output.

CASES is the table: (name, expected outcome, what the error line must contain / what the output must show).
Every case runs through `gpt_ads.cli.prepare.execute`, the command's own code after flag parsing (in-process: the table
costs seconds, not a process start per case); `test_cli_subprocess_case` runs one case through the real
console entry point.
"""

import contextlib
import gzip
import importlib.util
import io
import json
import os
import subprocess
import sys
import traceback

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_ads.cli import prepare as prepare_cli
from gpt_ads.data import prepare as prep
from gpt_ads.data import store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = "user,ts,ad,device"


def _users() -> list[str]:
  """12 user ids, 4 in each split (seed 0, val / test fractions 0.25)."""
  want = {"train": 4, "validation": 4, "test": 4}
  out, i = [], 0
  while any(want.values()):
    u, i = f"u{i}", i + 1
    split = prep.user_split(u, val_fraction=0.25, test_fraction=0.25)
    if want[split]:
      want[split] -= 1
      out.append(u)
  return out


USERS = _users()


def rows(n_events: int = 4) -> list[list[str]]:
  """[user, ts, ad, device] rows in file order: every user n_events events at 1000, 1010, ..."""
  return [[u, str(1000 + 10 * t), f"a{(i + t) % 3}", f"d{i % 2}"] for t in range(n_events)
          for i, u in enumerate(USERS)]


def csv_bytes(data: list[list[str]], header: str = HEADER, sep: str = ",", end: str = "\n") -> bytes:
  return (end.join([header, *(sep.join(r) for r in data)]) + end).encode()


def with_column(k: int, fn) -> list[list[str]]:
  """rows() with column k of row i replaced by fn(i, value)."""
  return [r[:k] + [fn(i, r[k])] + r[k + 1:] for i, r in enumerate(rows())]


def parquet_bytes(columns: dict) -> bytes:
  sink = io.BytesIO()
  pq.write_table(pa.table(columns), sink)
  return sink.getvalue()


def base_columns() -> dict:
  cols = list(zip(*rows()))
  return {"user": list(cols[0]), "ts": pa.array([int(v) for v in cols[1]], pa.int64()), "ad": list(cols[2]),
          "device": list(cols[3])}


def parquet_with(**replace) -> bytes:
  return parquet_bytes({**base_columns(), **replace})


N = len(rows())
OK, REJECT = "ok", "reject"

# name: (file name, content bytes (or a callable(tmp_path) -> path), outcome, expected error text / output check,
#        PrepareOptions overrides)
CASES = {
    # --- files and headers
    "empty_file": ("ev.csv", b"", REJECT, "empty file", {}),
    "header_only": ("ev.csv", csv_bytes([]), REJECT, "no data rows", {}),
    "blank_lines_only": ("ev.csv", b"\n\n\n", REJECT, "no header line", {}),
    "whitespace_header": ("ev.csv", b"   \nu1,1,a,x\n", REJECT, "no header line", {}),
    "missing_user_column": ("ev.csv", csv_bytes([r[1:] for r in rows()], "ts,ad,device"), REJECT,
                            "no column(s) ['user']", {}),
    "missing_time_column": ("ev.csv", csv_bytes([r[:1] + r[2:] for r in rows()], "user,ad,device"), REJECT,
                            "no column(s) ['ts']", {}),
    "missing_feature_column": ("ev.csv", csv_bytes([r[:3] for r in rows()], "user,ts,ad"), REJECT,
                               "no column(s) ['device']", {}),
    "duplicate_header": ("ev.csv", csv_bytes([r + [r[2]] for r in rows()], HEADER + ",ad"), REJECT,
                         "more than once", {}),
    "duplicate_unused_header": ("ev.csv", csv_bytes([r + ["x", "y"] for r in rows()], HEADER + ",n,n"), REJECT,
                                "more than once", {}),
    "header_repeated_in_data": ("ev.csv", csv_bytes(rows()[:5] + [HEADER.split(",")] + rows()[5:]), REJECT,
                                "row 6, column 'ts'", {}),
    "header_with_spaces": ("ev.csv", csv_bytes(rows(), " user,ts,ad,device"), REJECT, "no column(s) ['user']", {}),
    "header_other_case": ("ev.csv", csv_bytes(rows(), "User,ts,ad,device"), REJECT, "no column(s) ['user']", {}),
    "input_missing": ("nope.csv", None, REJECT, "no such file", {}),
    "input_is_directory": ("dir.csv", "mkdir", REJECT, "is a directory", {}),
    # --- malformed rows, truncation, encodings
    "too_few_fields": ("ev.csv", csv_bytes(rows()[:3] + [["u1", "5"]] + rows()[3:]), REJECT, "row 4", {}),
    "too_many_fields": ("ev.csv", csv_bytes(rows()[:3] + [["u1", "5", "a", "b", "c"]] + rows()[3:]), REJECT,
                        "row 4", {}),
    "truncated_mid_row": ("ev.csv", csv_bytes(rows())[:-9], REJECT, f"row {N}", {}),
    "truncated_mid_quote": ("ev.csv", csv_bytes(rows()) + b'u1,2000,"a', REJECT, "ev.csv", {}),
    "quoted_newline_in_value": ("ev.csv", csv_bytes(rows()) + f'{USERS[0]},2000,"a\nb",d0\n'.encode(), OK,
                                "events=49", {}),
    "non_utf8_feature": ("ev.csv", csv_bytes(rows()).replace(b"a1", b"a\xe9", 1), REJECT, "not UTF-8", {}),
    "non_utf8_user": ("ev.csv", csv_bytes(rows()).replace(b"\nu", b"\n\xffu", 1), REJECT, "column 'user'", {}),
    "non_utf8_header": ("ev.csv", b"us\xe9r,ts,ad,device\n" + csv_bytes(rows()).split(b"\n", 1)[1], REJECT,
                        "header", {}),
    "non_utf8_unused_column": ("ev.csv", csv_bytes([r + ["cafX"] for r in rows()], HEADER + ",note")
                               .replace(b"cafX", b"caf\xe9"), OK, "events=48", {}),
    "utf16_file": ("ev.csv", csv_bytes(rows()).decode().encode("utf-16"), REJECT, "not UTF-8", {}),
    "binary_garbage": ("ev.csv", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), REJECT,
                       "ev.csv", {}),
    "utf8_bom": ("ev.csv", b"\xef\xbb\xbf" + csv_bytes(rows()), OK, "events=48", {}),
    "crlf_line_endings": ("ev.csv", csv_bytes(rows(), end="\r\n"), OK, "events=48", {}),
    "cr_only_line_endings": ("ev.csv", csv_bytes(rows(), end="\r"), OK, "events=48", {}),
    "trailing_blank_lines": ("ev.csv", csv_bytes(rows()) + b"\n\n\n", OK, "events=48", {}),
    "semicolon_delimited": ("ev.csv", csv_bytes(rows(), HEADER.replace(",", ";"), sep=";"), REJECT,
                            "no column(s) ['user', 'ts', 'ad', 'device']", {}),
    "nul_bytes_in_value": ("ev.csv", csv_bytes(with_column(2, lambda i, v: v + "\0x" if i == 0 else v)), OK,
                           "events=48", {}),
    "huge_field": ("ev.csv", csv_bytes(with_column(2, lambda i, v: "z" * 1_000_000 if i == 0 else v)), OK,
                   "events=48", {}),
    "gzip_csv": ("ev.csv.gz", gzip.compress(csv_bytes(rows())), OK, "events=48", {}),
    "gzip_truncated": ("ev.csv.gz", gzip.compress(csv_bytes(rows() * 50))[:300], REJECT,
                       "ev.csv.gz: cannot be read to its end", {}),
    "unknown_extension": ("ev.log", csv_bytes(rows()), REJECT, "--format", {}),
    # --- timestamps
    "unsorted_timestamps": ("ev.csv", csv_bytes(rows()[::-1]), OK, "sorted", {}),
    "negative_timestamps": ("ev.csv", csv_bytes(with_column(1, lambda i, v: str(-int(v)))), OK, "events=48", {}),
    "nan_timestamps": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "NaN" if i % 5 == 0 else v)), OK,
                       "missing_time=10", {}),
    "empty_timestamps": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "" if i % 7 == 0 else v)), OK,
                         "missing_time=7", {}),
    "all_timestamps_nan": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "nan")), REJECT,
                           "no events left: 48 rows read, dropped: missing_time=48", {}),
    "inf_timestamp": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "inf" if i == 3 else v)), REJECT,
                      "row 4, column 'ts'", {}),
    "huge_float_timestamp": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "1e30" if i == 3 else v)), REJECT,
                             "out of range", {}),
    "int64_overflow_timestamp": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "9" * 25 if i == 3 else v)),
                                 REJECT, "row 4, column 'ts'", {}),
    "timestamp_out_of_range_for_unit": ("ev.csv", csv_bytes(with_column(1, lambda i, v: str(10**17))), REJECT,
                                        "out of range for --time_unit=s", {}),
    "bad_iso_date": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "2024-13-45" if i == 2 else v)), REJECT,
                     "cannot parse timestamp '2024-13-45'", {}),
    "text_timestamp": ("ev.csv", csv_bytes(with_column(1, lambda i, v: "yesterday" if i == 2 else v)), REJECT,
                       "row 3, column 'ts'", {}),
    "mixed_time_formats": ("ev.csv", csv_bytes(with_column(1, lambda i, v: f"2024-05-01T00:{i:02d}:00Z" if i % 2
                                                                    else v)), OK, "events=48", {}),
    "iso_with_offsets": ("ev.csv", csv_bytes(with_column(1, lambda i, v: f"2024-05-01T10:{int(v) % 60:02d}:00+02:00")),
                         OK, "events=48", {}),
    "fractional_seconds": ("ev.csv", csv_bytes(with_column(1, lambda i, v: v + ".25")), OK, "events=48", {}),
    # --- users and ids
    "some_users_empty": ("ev.csv", csv_bytes(with_column(0, lambda i, v: "" if i % 11 == 0 else v)), OK,
                         "missing_user=5", {}),
    "all_users_empty": ("ev.csv", csv_bytes(with_column(0, lambda i, v: "")), REJECT, "missing_user=48", {}),
    "single_user": ("ev.csv", csv_bytes([r for r in rows() if r[0] == USERS[0]]), REJECT,
                    "split has no users (1 users kept in all)", {}),
    "too_few_events_everywhere": ("ev.csv", csv_bytes(rows(1)), REJECT, "too_few_events=12", {"min_events": 2}),
    "huge_ids": ("ev.csv", csv_bytes(with_column(2, lambda i, v: str(10**30 + i % 3))), OK, "events=48", {}),
    "huge_user_ids": ("ev.csv", csv_bytes(with_column(0, lambda i, v: v + "9" * 40)), OK, "events=48", {}),
    "negative_ids": ("ev.csv", csv_bytes(with_column(2, lambda i, v: str(-(i % 3)))), OK, "events=48", {}),
    "nan_feature_values": ("ev.csv", csv_bytes(with_column(3, lambda i, v: "NaN" if i % 4 == 0 else v)), OK,
                           "missing_values.device=12", {}),
    "feature_all_missing": ("ev.csv", csv_bytes(with_column(3, lambda i, v: "")), REJECT,
                            "no value occurs", {}),
    "duplicate_rows": ("ev.csv", csv_bytes(rows() + rows()[:6]), OK, "duplicate=6", {}),
    "whitespace_in_values": ("ev.csv", csv_bytes(with_column(2, lambda i, v: f" {v} ")), OK, "events=48", {}),
    # --- Parquet
    "parquet_valid": ("ev.parquet", parquet_with(), OK, "events=48", {}),
    "parquet_list_column": ("ev.parquet", parquet_with(ad=[[1, 2]] * N), REJECT, "has type list", {}),
    "parquet_struct_column": ("ev.parquet", parquet_with(device=[{"a": 1}] * N), REJECT, "has type struct", {}),
    "parquet_null_feature": ("ev.parquet", parquet_with(ad=pa.nulls(N)), REJECT, "column 'ad'", {}),
    "parquet_bool_time": ("ev.parquet", parquet_with(ts=[True] * N), REJECT, "column 'ts'", {}),
    "parquet_float_user_nan": ("ev.parquet", parquet_with(user=[float(i % 12) if i % 9 else float("nan")
                                                                for i in range(N)]), OK, "missing_user=6", {}),
    "parquet_timestamp_tz": ("ev.parquet", parquet_with(ts=pa.array(np.arange(N) * 10**9, pa.timestamp("ns", "UTC"))),
                             OK, "events=48", {}),
    "parquet_date_column": ("ev.parquet", parquet_with(ts=pa.array(np.arange(N, dtype=np.int32), pa.date32())), OK,
                            "events=48", {}),
    "parquet_zero_rows": ("ev.parquet", parquet_bytes({k: v[:0] for k, v in base_columns().items()}), REJECT,
                          "no data rows", {}),
    "parquet_truncated": ("ev.parquet", parquet_with()[:200], REJECT, "not a readable Parquet file", {}),
    "parquet_is_csv": ("ev.parquet", csv_bytes(rows()), REJECT, "not a readable Parquet file", {}),
    "parquet_missing_column": ("ev.parquet", parquet_bytes({k: v for k, v in base_columns().items() if k != "ad"}),
                               REJECT, "no column(s) ['ad']", {}),
    "parquet_huge_uint64_ids": ("ev.parquet", parquet_with(ad=pa.array([2**64 - 1 - i % 3 for i in range(N)],
                                                                       pa.uint64())), OK, "events=48", {}),
    "parquet_negative_int_ts": ("ev.parquet", parquet_with(ts=pa.array(-np.arange(N), pa.int64())), OK,
                                "events=48", {}),
    "parquet_inf_float_ts": ("ev.parquet", parquet_with(ts=[float("inf")] + [1.0] * (N - 1)), REJECT,
                             "row 1, column 'ts'", {}),
    "parquet_nan_float_ts": ("ev.parquet", parquet_with(ts=[float("nan")] * 4 + [1.0] * (N - 4)), OK,
                             "missing_time=4", {}),
    "parquet_non_utf8_binary": ("ev.parquet", parquet_with(ad=pa.array([b"\xff\xfe"] * N, pa.binary())), REJECT,
                                "not UTF-8", {}),
    "parquet_dictionary_strings": ("ev.parquet", parquet_with(device=pa.array(list(zip(*rows()))[3])
                                                              .dictionary_encode()), OK, "events=48", {}),
}


def _write_case(tmp_path, name: str) -> str:
  file_name, content = CASES[name][:2]
  path = tmp_path / file_name
  if content == "mkdir":
    path.mkdir()
  elif content is not None:
    path.write_bytes(content)
  return str(path)


def run_case(tmp_path, name: str, engine: str = "") -> dict:
  """Runs one case through gpt_ads.cli.prepare.execute (`engine`: --beam_pipeline_options; "" = the local
  engine): {status, stderr, output (dir exists), leftovers, meta, crash}."""
  _, _, _, _, overrides = CASES[name]
  path = _write_case(tmp_path, name)
  out = tmp_path / "out"
  options = prep.PrepareOptions(input=[path], output=str(out), user_col="user", time_col="ts",
                                features=["ad", "device"], val_fraction=0.25, test_fraction=0.25,
                                beam_pipeline_options=engine, **{"min_events": 1, **overrides})
  err = io.StringIO()
  crash = None
  with contextlib.redirect_stderr(err):
    try:
      status = prepare_cli.execute(options, log=lambda line: None)
    except BaseException:  # noqa: BLE001 - a traceback is exactly what the test must not see
      status, crash = None, traceback.format_exc()
  meta = json.load(open(out / "schema.json")) if status == 0 else None
  return {"status": status, "stderr": err.getvalue(), "output": out.exists(), "crash": crash, "meta": meta,
          "leftovers": [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]}


def _summary(meta: dict) -> str:
  """'events=48 missing_user=5 missing_time=0 duplicate=0 missing_values.device=0 ...' of an output's stats."""
  s = meta["stats"]
  parts = [f"events={sum(s['events'].values())}"]
  parts += [f"{k}={v}" for k, v in s["rows_dropped"].items()]
  parts += [f"missing_values.{k}={v}" for k, v in s["missing_values"].items()]
  return " ".join(parts)


def check_outcome(name: str, r: dict) -> str:
  """Asserts the case's documented outcome; -> "handled" or "rejected"."""
  _, _, outcome, expect, _ = CASES[name]
  assert r["crash"] is None, f"{name}: traceback\n{r['crash']}"
  assert "Traceback" not in r["stderr"], f"{name}: {r['stderr']}"
  assert r["leftovers"] == [], f"{name}: temporary directories left: {r['leftovers']}"
  if outcome == REJECT:
    lines = r["stderr"].strip().splitlines()
    assert r["status"] == 2, f"{name}: expected a rejection, got status {r['status']} ({r['stderr']!r})"
    assert len(lines) == 1 and lines[0].startswith("gpt-ads-prepare: error: "), f"{name}: {r['stderr']!r}"
    assert expect in lines[0], f"{name}: {expect!r} not in {lines[0]!r}"
    assert not r["output"], f"{name}: output directory written on error"
    return "rejected"
  assert r["status"] == 0, f"{name}: expected to be handled, got {r['stderr']!r}"
  assert r["output"] and r["stderr"] == "", f"{name}: {r['stderr']!r}"
  summary = _summary(r["meta"])
  if expect == "sorted":
    assert "events=48" in summary
  else:
    assert expect in summary.split(), f"{name}: {expect!r} not in {summary!r}"
  return "handled"


def test_fuzz_cases_are_handled_or_rejected_in_one_line(tmp_path):
  outcomes = {}
  for i, name in enumerate(CASES):
    case_dir = tmp_path / f"{i:02d}"
    case_dir.mkdir()
    outcomes[name] = check_outcome(name, run_case(case_dir, name))
  counts = {k: list(outcomes.values()).count(k) for k in ("handled", "rejected")}
  print(f"fuzz: {len(CASES)} malformed inputs -> {counts['handled']} handled by the policy, "
        f"{counts['rejected']} rejected in one line, 0 tracebacks, 0 partial outputs")
  assert len(CASES) >= 50 and sum(counts.values()) == len(CASES)
  assert counts["handled"] >= 15 and counts["rejected"] >= 30  # both halves of the policy are exercised


@pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None, reason="needs the [beam] extra")
def test_fuzz_cases_end_the_same_on_beam(tmp_path):
  """Every case through the Beam engine (in-process DirectRunner): the local engine's outcome, its error line
  word for word, its stats."""
  for i, name in enumerate(CASES):
    local_dir, beam_dir = tmp_path / f"{i:02d}" / "local", tmp_path / f"{i:02d}" / "beam"
    local_dir.mkdir(parents=True)
    beam_dir.mkdir(parents=True)
    local, beam = run_case(local_dir, name), run_case(beam_dir, name, engine="--runner=DirectRunner")
    check_outcome(name, beam)
    assert beam["stderr"].replace(str(beam_dir), "DIR") == local["stderr"].replace(str(local_dir), "DIR"), name
    if local["meta"] is not None:
      assert _summary(beam["meta"]) == _summary(local["meta"]), name
      assert beam["meta"]["features"] == local["meta"]["features"], name


def test_unsorted_input_is_sorted_per_user(tmp_path):
  r = run_case(tmp_path, "unsorted_timestamps")
  assert r["status"] == 0
  ds = store.open_dir(str(tmp_path / "out"))
  vocab = {f["name"]: f["vocabulary"]["values"] for f in ds.meta["features"]}
  expected = {}
  for u, ts, ad, _ in sorted(rows(), key=lambda r: int(r[1])):
    expected.setdefault(u, []).append(ad)
  for split in store.SPLITS:
    src = ds.source(split)
    for i in range(len(src)):
      rec = src[i]
      assert [vocab["ad"][j - 2] for j in rec["ad"]] == expected[rec["user_id"].decode()]


def test_cli_subprocess_case(tmp_path):
  """The console entry point itself: one malformed file -> exit 2, one stderr line, no traceback, no output."""
  path = _write_case(tmp_path, "non_utf8_user")
  proc = subprocess.run([sys.executable, "-m", "gpt_ads.cli.prepare", f"--input={path}", "--user_col=user",
                         "--time_col=ts", "--features=ad,device", f"--output={tmp_path / 'out'}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "row 1, column 'user'" in lines[0] and "not UTF-8" in lines[0], proc.stderr
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["negative_ids", "huge_ids"])
def test_odd_ids_are_kept_as_exact_values(tmp_path, name):
  r = run_case(tmp_path, name)
  assert r["status"] == 0
  values = next(f for f in r["meta"]["features"] if f["name"] == "ad")["vocabulary"]["values"]
  expected = {r_[2] for r_ in (with_column(2, lambda i, v: str(-(i % 3))) if name == "negative_ids" else
                               with_column(2, lambda i, v: str(10**30 + i % 3)))}
  assert set(values) <= expected and len(values) >= 2

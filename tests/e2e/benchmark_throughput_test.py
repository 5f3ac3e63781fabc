"""benchmarks/throughput.py on CPU, smallest preset: the JSON contract (best_mfu, vocab_step_ratio, compile_ratio),
the per-preset fields the accelerator runs add (tokens per chip, planned memory), --dry_run, and the one-line
refusal of a platform JAX does not see."""

import json
import os
import subprocess
import sys

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "throughput.py")


def _run(tmp_path, *flags):
  out = tmp_path / "t.json"
  proc = subprocess.run([sys.executable, SCRIPT, f"--out={out}", "--presets=nano", "--steps=1", *flags],
                        capture_output=True, text=True, timeout=600, env=subprocess_env(), cwd=tmp_path)
  return proc, out


def test_presets_row_and_contract_keys(tmp_path):
  proc, out = _run(tmp_path, "--parts=presets", "--batch_size=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  for key in ("best_mfu", "vocab_step_ratio", "compile_ratio"):
    assert key in report, key
  assert report["vocab_step_ratio"] is None and report["compile_ratio"] is None  # parts not run
  assert report["platform"] == "cpu" and report["published_peak_bf16_tflops_per_chip"] is None
  (row,) = report["presets"]
  assert row["preset"] == "nano" and row["batch_size"] == 8 and row["attention"] == "xla"
  assert row["tokens_per_sec_per_chip"] == row["events_per_sec"] / row["chips"] > 0
  assert 0 < report["best_mfu"] == row["mfu"] < 1


def test_dry_run_plans_memory_without_a_step(tmp_path):
  proc, out = _run(tmp_path, "--dry_run", "--batch_size=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  (row,) = report["presets"]
  assert report["dry_run"] and report["best_mfu"] is None and "step_seconds" not in row
  assert row["planned_peak_bytes_per_device"] > row["planned_params_bytes_per_device"] > 0


def test_a_platform_jax_does_not_see_is_one_line(tmp_path):
  proc, out = _run(tmp_path, "--platform=gpu")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and "Traceback" not in proc.stderr and not out.exists()
  assert "--platform=gpu" in lines[-1] and "default backend here is cpu" in lines[-1]

"""gpt-ads-sweep: expands a sweep, runs it resumably, gathers results.csv, or prints cluster commands."""

import csv
import os
import subprocess
import sys

from conftest import TINY, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sweep_file(tmp_path):
  path = tmp_path / "tiny_sweep.py"
  overrides = {**TINY, "train.num_steps": 4, "train.eval_every": 0, "train.checkpoint_every": 1000}
  path.write_text(
      "from gpt_ads.scaling.sweep import grid\n\n\n"
      "def get_sweep(arg=None):\n"
      f"  return grid(config='configs/default.py', size=['nano', 'micro'], overrides={overrides!r})\n")
  return str(path)


def _run(*args):
  return subprocess.run([sys.executable, "-m", "gpt_ads.cli.sweep", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=subprocess_env())


def test_sweep_runs_resumes_and_gathers(tmp_path):
  sweep, workdir = _sweep_file(tmp_path), str(tmp_path / "sweep")
  printed = _run(f"--sweep={sweep}", f"--workdir={workdir}", "--print_commands")
  assert printed.returncode == 0, printed.stderr[-2000:]
  lines = printed.stdout.strip().splitlines()
  assert len(lines) == 2 and all(line.startswith("gpt-ads-train --config=configs/default.py:size=") for line in lines)
  assert "--config.train.num_steps=4" in lines[0] and not os.path.exists(workdir)

  first = _run(f"--sweep={sweep}", f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == ["nano", "micro"]
  assert float(rows[0]["non_embedding_params"]) < float(rows[1]["non_embedding_params"])
  assert all(float(r["test_loss"]) > 0 and float(r["train_flops"]) > 0 for r in rows)
  assert [r["backbone"] for r in rows] == ["transformer"] * 2 and rows[0]["d_model"] == "24"
  # The runs share one copy of the generated data (one directory per generator setting).
  assert len(os.listdir(os.path.join(workdir, "generated"))) == 1
  assert not os.path.exists(os.path.join(workdir, "runs", "nano", "generated_data"))
  assert os.path.exists(os.path.join(workdir, "REPORT.md"))

  again = _run(f"--sweep={sweep}", f"--workdir={workdir}", "--downstream=is_bot:anomaly",
               "--downstream_max_users=100")
  assert again.returncode == 0 and again.stdout.count("done, skipped") == 2, again.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, "runs", "micro", "downstream", "is_bot_anomaly.json"))
  assert "Table 5" in open(os.path.join(workdir, "REPORT.md")).read()


def test_bad_sweep_is_one_line(tmp_path):
  proc = _run(f"--sweep={tmp_path}/missing.py", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "gpt-ads-sweep: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_flops_budget_sets_the_steps_that_spend_it():
  from gpt_ads.scaling import sweep
  runs = sweep.grid(config="configs/default.py", size=["nano", "micro"], flops_budget=[1e12],
                    overrides={"train.batch_size": 32})
  assert [r["name"] for r in runs] == ["nano_flops1e12", "micro_flops1e12"]
  steps = [sweep.run_config(r).train.num_steps for r in runs]
  assert steps[0] > steps[1] > 0  # the bigger model gets fewer steps for the same compute
  spent = [s * sweep.run_config(r).train.batch_size for s, r in zip(steps, runs)]
  assert all(x > 0 for x in spent)
  assert "--config.train.num_steps=" in sweep.command(runs[0], "/tmp/w")

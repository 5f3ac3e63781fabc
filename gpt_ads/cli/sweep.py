"""`gpt-ads-sweep --sweep=configs/sweeps/NAME.py[:ARGS] --workdir=DIR [--print_commands] [--only=A,B]
[--downstream=LABEL:TASK,...]`: flags, then gpt_ads.scaling.sweep (what a sweep is and does: its docstring)."""

from absl import app, flags, logging

from gpt_ads.cli import errors
from gpt_ads.scaling import sweep

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags, defined only by `run()`."""
  flags.DEFINE_string("sweep", None, "Sweep file[:ARGS] (get_sweep(arg) -> runs).")
  flags.DEFINE_string("workdir", None, "Sweep directory: runs/<name>/ and results.csv.")
  flags.DEFINE_bool("print_commands", False, "Print one gpt-ads-train command per run instead of running.")
  flags.DEFINE_string("only", None, "Comma-separated run names to run (default: all).")
  flags.DEFINE_string("title", "Scaling report", "Title of DIR/REPORT.md.")
  flags.DEFINE_list("downstream", [], "LABEL:TASK pairs (e.g. converted:probe,is_bot:anomaly) run with "
                    "gpt-ads-downstream on every finished run (skipped when done); REPORT.md gets the lift table.")
  flags.DEFINE_integer("downstream_max_users", 20_000, "--max_users of the downstream tasks.")
  flags.mark_flags_as_required(["sweep", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  with errors.one_line_errors("gpt-ads-sweep", ValueError, FloatingPointError):
    runs = all_runs = sweep.load_sweep(FLAGS.sweep)
    tasks = [tuple(x.split(":", 1)) for x in FLAGS.downstream]
    if any(len(t) != 2 for t in tasks):
      raise ValueError(f"--downstream={','.join(FLAGS.downstream)}: give LABEL:TASK pairs")
    if FLAGS.only:
      wanted = set(FLAGS.only.split(","))
      unknown = wanted - {r["name"] for r in runs}
      if unknown:
        raise ValueError(f"--only names unknown runs {sorted(unknown)}")
      runs = [r for r in runs if r["name"] in wanted]
    if FLAGS.print_commands:
      for run in runs:
        print(sweep.command(run, FLAGS.workdir))
      return
    report = sweep.run_sweep(runs, FLAGS.workdir, all_runs=all_runs, tasks=tasks,
                             downstream_max_users=FLAGS.downstream_max_users, title=FLAGS.title)
    print(f"wrote {report}")


def run():
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()

"""`gpt-ads-downstream --workdir=DIR [--data_dir=DATA] --label=COLUMN --task=probe|finetune|anomaly
[--labeled_positives=N]`: flags, then gpt_ads.downstream.tasks.run_task (the tasks and the JSON: its docstring)."""

from absl import app, flags

from gpt_ads.cli import errors
from gpt_ads.downstream import tasks

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A gpt-ads-train run directory (its latest checkpoint is used).")
  flags.DEFINE_string("data_dir", None, "Prepared data set with the label (default: the one the run trained on).")
  flags.DEFINE_string("label", None, "Binary label column of the data set (e.g. is_bot, converted).")
  flags.DEFINE_enum("task", None, list(tasks.TASKS), "probe | finetune | anomaly.")
  flags.DEFINE_integer("labeled_positives", 0, "probe: only this many training positives are known, every other "
                       "training user is unlabeled (positive-unlabeled learning); 0 = every label.")
  flags.DEFINE_enum("pooling", "last", ["last", "mean"], "finetune: the user vector (after the last event, or mean).")
  flags.DEFINE_integer("max_users", 20_000, "At most this many users per split (the first ones).")
  flags.DEFINE_integer("finetune_steps", 300, "finetune: optimizer steps.")
  flags.DEFINE_float("finetune_lr", 3e-4, "finetune: AdamW learning rate (encoder and head).")
  flags.DEFINE_integer("batch_size", 256, "Users per forward pass (finetune: per step, capped at 64).")
  flags.mark_flags_as_required(["workdir", "label", "task"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  with errors.one_line_errors("gpt-ads-downstream", ValueError):
    r = tasks.run_task(FLAGS.workdir, FLAGS.data_dir, FLAGS.label, FLAGS.task, pooling=FLAGS.pooling,
                       max_users=FLAGS.max_users, finetune_steps=FLAGS.finetune_steps, finetune_lr=FLAGS.finetune_lr,
                       batch_size=FLAGS.batch_size, labeled_positives=FLAGS.labeled_positives)
  bayes = f"  (Bayes-optimal auc {r['bayes']['auc']:.4f}, recall@1% {r['bayes']['recall_at_fpr']['0.01']:.4f})" \
      if "bayes" in r else ""
  print(f"{r['label']} {r['task']}: auc {r['auc']:.4f}, recall@1%FPR {r['recall_at_fpr']['0.01']:.4f}, "
        f"recall@5%FPR {r['recall_at_fpr']['0.05']:.4f}{bayes} -> {r['path']}")


def run():
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()

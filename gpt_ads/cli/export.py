"""`gpt-ads-export --workdir=DIR --out=FILE [--feature=NAME] [--given=F,...] [--pooling=last|mean] [--length=T]`.

Serializes the trained model's `embed` and `score` (gpt_ads.api.export_run) with `jax.export`, parameters baked in
and the batch size symbolic, into one zip file that needs no gpt_ads (nor Flax) to run — only jax:

    embed.bin   batch -> user vectors [b, d]
    score.bin   (candidates [n], batch[, given]) -> log p(next `feature` = candidate) [b, n]: `api.score`; with
                `--given` (a "chain" run) it also takes the next event's values [b] of those features, in
                that order (meta "given"); without, they are summed out as `api.score` does
    meta.json   input names and order, length T, feature scored, the given features, pooling, the schema

    exported = gpt_ads.api.read_export(FILE)          # or: jax.export.deserialize(zip member bytes)
    vectors = exported["embed"].call(*[batch[k] for k in exported["meta"]["inputs"]])
"""

from absl import app, flags

from gpt_ads import api
from gpt_ads.cli import errors

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A gpt-ads-train run directory (its latest checkpoint is exported).")
  flags.DEFINE_string("out", None, "Output file (a zip: embed.bin, score.bin, meta.json).")
  flags.DEFINE_string("feature", None, "Feature `score` ranks (default: the first sampled_softmax feature).")
  flags.DEFINE_list("given", [], "Features of the next event whose values `score` takes as inputs, after the batch "
                    "(api.score(given=); a chain run's features before --feature).")
  flags.DEFINE_enum("pooling", "last", ["last", "mean"], "User-vector pooling of `embed`.")
  flags.DEFINE_integer("length", 0, "Events per row of the exported inputs (0 = the run's model.max_len).")
  flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  with errors.one_line_errors("gpt-ads-export", ValueError):
    meta = api.export_run(FLAGS.workdir, FLAGS.out, feature=FLAGS.feature, given=FLAGS.given, pooling=FLAGS.pooling,
                          length=FLAGS.length)
  print(f"wrote {FLAGS.out}: embed and score({meta['feature']}), inputs {meta['inputs']} of [b, {meta['length']}]")


def run():
  _define_flags()
  app.run(main)



if __name__ == "__main__":
  run()

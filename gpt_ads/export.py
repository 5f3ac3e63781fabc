"""`gpt-ads-export --workdir=DIR --out=FILE [--feature=NAME] [--given=F,...] [--pooling=last|mean] [--length=T]`.

Serializes the trained model's `embed` and `score` (gpt_ads.api) with `jax.export`, parameters baked in and the
batch size symbolic, into one zip file that needs no gpt_ads (nor Flax) to run — only jax:

    embed.bin   batch -> user vectors [b, d]
    score.bin   (candidates [n], batch[, given]) -> log p(next `feature` = candidate) [b, n]: `api.score`; with
                `--given` (a "chain" run) it also takes the next event's values [b] of those features, in
                that order (meta "given"); without, they are summed out as `api.score` does
    meta.json   input names and order, length T, feature scored, the given features, pooling, the schema

    exported = gpt_ads.export.read(FILE)          # or: jax.export.deserialize(zip member bytes)
    vectors = exported["embed"].call(*[batch[k] for k in exported["meta"]["inputs"]])
"""

import json
import os
import sys
import zipfile

from absl import app, flags

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


def export(workdir: str, out: str, *, feature: str | None = None, given: list[str] | tuple = (), pooling: str = "last",
           length: int = 0) -> dict:
  """Writes the artifact; returns its meta."""
  import jax
  import numpy as np

  from gpt_ads import api
  params, schema, config = api.load(workdir)
  feature = feature or next((f.name for f in schema if f.sampled), schema.features[0].name)
  if feature not in [f.name for f in schema]:
    raise ValueError(f"--feature={feature!r} is not in the run's schema {[f.name for f in schema]}")
  length = length or int(config.model.max_len)
  if not 1 <= length <= config.model.max_len:
    raise ValueError(f"--length={length} must be in 1..model.max_len={config.model.max_len}")
  inputs = [f.name for f in schema] + ["segment_ids", "positions"]
  b, n = jax.export.symbolic_shape("b, n")
  row = jax.ShapeDtypeStruct((b, length), np.int32)

  def as_batch(arrays):
    return dict(zip(inputs, arrays))

  embed = jax.jit(lambda *arrays: api.embed(params, as_batch(arrays), schema=schema, config=config,
                                            pooling=pooling))
  given = list(given)
  names = [f.name for f in schema]
  if set(given) - set(names):
    raise ValueError(f"--given={','.join(given)}: {sorted(set(given) - set(names))} are not in the run's schema "
                     f"{names}")
  score = jax.jit(lambda cands, *arrays: api.score(
      params, as_batch(arrays[:len(inputs)]), feature, cands, schema=schema, config=config,
      given=dict(zip(given, arrays[len(inputs):]))))
  api.score(params, api.make_batch(schema, {n: [[2]] for n in names}, length=length), feature,
            np.array([2], np.int32), schema=schema, config=config,
            given={g: np.array([2], np.int32) for g in given})  # a bad --given fails here, with api's message
  exported_embed = jax.export.export(embed)(*[row] * len(inputs))
  exported_score = jax.export.export(score)(jax.ShapeDtypeStruct((n,), np.int32), *[row] * len(inputs),
                                            *[jax.ShapeDtypeStruct((b,), np.int32)] * len(given))
  meta = {"format": "gpt_ads.export/1", "inputs": inputs, "length": length, "feature": feature, "given": given,
          "pooling": pooling, "d_model": int(config.model.d_model),
          "schema": [{"name": f.name, "vocab_size": f.vocab_size, "loss": f.loss} for f in schema],
          "embed": "embed(*[batch[k] for k in inputs]) -> [b, d_model]",
          "score": "score(candidates [n] int32, *[batch[k] for k in inputs], *[next event's value [b] of g for g in "
                   "given]) -> log-probabilities [b, n]"}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  with zipfile.ZipFile(tmp, "w") as z:
    z.writestr("embed.bin", bytes(exported_embed.serialize()))
    z.writestr("score.bin", bytes(exported_score.serialize()))
    z.writestr("meta.json", json.dumps(meta, indent=1))
  os.replace(tmp, out)
  return meta


def read(path: str) -> dict:
  """{"embed": jax.export.Exported, "score": jax.export.Exported, "meta": dict} from an artifact."""
  import jax
  with zipfile.ZipFile(path) as z:
    return {"embed": jax.export.deserialize(bytearray(z.read("embed.bin"))),
            "score": jax.export.deserialize(bytearray(z.read("score.bin"))),
            "meta": json.loads(z.read("meta.json"))}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    meta = export(FLAGS.workdir, FLAGS.out, feature=FLAGS.feature, given=FLAGS.given, pooling=FLAGS.pooling,
                  length=FLAGS.length)
  except ValueError as e:
    print(f"gpt-ads-export: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {FLAGS.out}: embed and score({meta['feature']}), inputs {meta['inputs']} of [b, {meta['length']}]")


def run():
  _define_flags()
  app.run(main)



if __name__ == "__main__":
  run()

"""Which data a run trains on: a prepared data set (`config.data.dir`) or, when that is empty, generated users.

Both go through the same path: a prepared data set directory (gpt_ads.data.store: schema.json + TFDS
ArrayRecord splits) read by the Grain pipeline. Generated users (gpt_ads.data.synthetic) are first written to
`<workdir>/generated_data` (or, to share them between runs, `<config.data.generated_dir>/generated_<fingerprint>`;
reused while the generator settings are unchanged) and come with exact reference losses on the test users, kept
in the data set's schema.json: the Bayes-optimal factorized and joint losses and the unigram loss.

The schema: names and vocabulary sizes come from the data set's schema.json; the model-side settings
(embed_dim, num_negatives, sampler, tied, weight, copy_lags) from `config.schema.defaults`, overridden per feature by
`config.schema.features.<name>` for the features the data has (entries for features it lacks are ignored, with a
warning, and so is their vocab_size: the default config lists the generated data's features). The loss kind is
the data set's unless the feature's config entry sets `loss` (e.g. an exact softmax for a 3K-item catalogue the
data builder marked `sampled_softmax`). `config.data.features` (optional; empty = all) picks the data set's
features a run uses, e.g. the item alone; `config.data.max_train_users` (optional; 0 = all) trains on the first N
users of its training split (data-scaling runs; value counts and output-bias priors stay those of the whole
split).
"""

import dataclasses
import hashlib
import json
import os
import time

import jax
import numpy as np
from absl import logging

from gpt_ads import features as features_lib
from gpt_ads.data import store, synthetic, writer

_DATA_KEYS = ("vocab_size",)  # what the data set decides
_LOSS = "loss"  # the data set's by default; a config entry may choose another (exact vs sampled)
_MODEL_KEYS = features_lib.MODEL_SIDE_KEYS  # what the config decides


@dataclasses.dataclass
class Dataset:
  """Attributes:
    schema: the event schema the data follows.
    prepared: the prepared data set (its schema.json as `prepared.meta`).
    counts: {feature: int64 [vocab_size]} value counts over training events (for unigram samplers).
    train, val, test: the splits as random-access sources of user records.
    references: exact reference losses on `test` (generated data only), else None.
  """
  schema: features_lib.Schema
  prepared: store.Prepared
  counts: dict[str, np.ndarray]
  train: object
  val: object
  test: object
  references: dict | None = None


def load(config, workdir: str) -> Dataset:
  """The run's data: `config.data.dir` if set, else generated users written under `workdir`."""
  if config.data.dir:
    prepared, references = store.open_dir(config.data.dir), None
  else:
    prepared, references = generated(config, workdir)
  schema = schema_for(prepared, config)
  too_long = {s: v["max_events"] for s, v in prepared.meta["splits"].items() if v["max_events"] > config.model.max_len}
  if too_long:
    logging.info("users longer than config.model.max_len=%d are cropped (longest per split: %s)",
                 config.model.max_len, too_long)
  train = prepared.source("train")
  limit = config.data.get("max_train_users", 0)
  if config.data.dir and limit:  # data scaling on a prepared data set: its first N training users
    if limit > len(train):
      logging.warning("config.data.max_train_users=%d > the %d training users of %s: all are used", limit,
                      len(train), prepared.path)
    train = train.head(limit)
  return Dataset(schema=schema, prepared=prepared, counts=prepared.counts(), train=train,
                 val=prepared.source("validation"), test=prepared.source("test"), references=references)


def schema_for(prepared: store.Prepared, config) -> features_lib.Schema:
  """The data set's features with the config's model-side settings (see the module docstring)."""
  defaults = config.schema.defaults.to_dict()
  overrides = {k: (v.to_dict() if hasattr(v, "to_dict") else dict(v)) for k, v in config.schema.features.items()}
  ignored = sorted(set(overrides) - set(prepared.feature_names))
  if ignored:
    logging.warning("config.schema.features.%s: the data set %s has no such feature(s); ignored (it has %s)",
                    ",".join(ignored), prepared.path, ", ".join(prepared.feature_names))
  chosen = tuple(config.data.get("features", ()) or ())  # () = every feature of the data set
  missing = sorted(set(chosen) - set(prepared.feature_names))
  if missing:
    raise ValueError(f"config.data.features: the data set {prepared.path} has no feature(s) {missing}; "
                     f"it has {', '.join(prepared.feature_names)}")
  specs = []
  for f in prepared.meta["features"]:
    if chosen and f["name"] not in chosen:
      continue
    o = overrides.get(f["name"], {})
    unknown = sorted(set(o) - set(_DATA_KEYS) - set(_MODEL_KEYS) - {_LOSS})
    if unknown:
      raise ValueError(f"config.schema.features.{f['name']} has unknown keys {unknown}; "
                       f"allowed: {sorted(_DATA_KEYS + _MODEL_KEYS + (_LOSS,))}")
    for k in _DATA_KEYS:  # the data decides (the default config's entries carry the generated data's values)
      if k in o and o[k] != f[k]:
        logging.info("config.schema.features.%s.%s=%r ignored: the data set has %r", f["name"], k, o[k], f[k])
    loss = o.get(_LOSS, f["loss"])
    if loss != f["loss"]:
      logging.info("config.schema.features.%s.loss=%r replaces the data set's %r", f["name"], loss, f["loss"])
    model_side = {k: o.get(k, defaults[k]) for k in _MODEL_KEYS if k in o or k in defaults}
    specs.append(features_lib.FeatureSpec(name=f["name"], vocab_size=int(f["vocab_size"]), loss=loss,
                                          **model_side))
  return features_lib.Schema(tuple(specs))


def generated(config, workdir: str) -> tuple[store.Prepared, dict]:
  """Draws train / val / test users (fixed seeds), writes them as a prepared data set (once) and returns it.

  Returns (prepared data set, exact reference losses on its test users).
  """
  schema = features_lib.Schema.from_config(config.schema.features)
  process = synthetic.Process(config.data.synthetic)
  for f in schema:
    if f.name not in process.vocab_sizes:
      raise ValueError(f"config.schema.features.{f.name}: generated data has no such feature; "
                       f"it has {sorted(process.vocab_sizes)}")
    if process.vocab_sizes[f.name] != f.vocab_size:
      raise ValueError(f"config.schema.features.{f.name}.vocab_size={f.vocab_size} but the generated data has "
                       f"{process.vocab_sizes[f.name]}; leave vocab_size tied to config.data.synthetic")
  if config.model.max_len < process.max_len:
    raise ValueError(f"config.model.max_len={config.model.max_len} < config.data.synthetic.max_len="
                     f"{process.max_len}: generated users would not fit; raise model.max_len")
  t0 = time.time()
  seed = config.data.seed
  sizes = {"train": config.data.num_train_users, "validation": config.data.num_val_users,
           "test": config.data.num_test_users}
  fingerprint = hashlib.sha256(json.dumps(
      {"synthetic": config.data.synthetic.to_dict(), "seed": seed, "sizes": sizes,
       "features": [(f.name, f.vocab_size, f.loss) for f in schema]}, sort_keys=True).encode()).hexdigest()[:16]
  suffix = f"_p{jax.process_index()}" if jax.process_count() > 1 else ""  # hosts may not share a filesystem
  if config.data.generated_dir:  # shared by runs (a sweep): one directory per generator setting
    path = os.path.join(config.data.generated_dir, f"generated_{fingerprint}{suffix}")
  else:
    path = os.path.join(workdir, "generated_data" + suffix)
  try:
    prepared = store.open_dir(path)
    source = prepared.meta["source"]
    if source.get("fingerprint") == fingerprint and "references" in source:
      logging.info("reusing generated users %s (%s)", sizes, path)
      return prepared, source["references"]
  except ValueError:
    pass
  users = {split: process.sample(n, seed=seed + i) for i, (split, n) in enumerate(sizes.items())}
  references = json.loads(json.dumps(synthetic.reference_losses(process, users["train"], users["test"]),
                                     default=float))
  writer.write(path, features=[{"name": f.name, "vocab_size": f.vocab_size, "loss": f.loss,
                               "vocabulary": {"kind": "generated"}, "source": "gpt_ads.data.synthetic"}
                              for f in schema],
              splits={split: (lambda u=u, split=split: _records(u, schema.names, split))
                      for split, u in users.items()},
              labels={"is_bot": {"kind": "numeric"}, "converted": {"kind": "numeric"},
                      "segment": {"kind": "numeric"}},
              source={"generator": "gpt_ads.data.synthetic", "fingerprint": fingerprint,
                      "synthetic": config.data.synthetic.to_dict(), "seed": seed, "references": references},
              overwrite=True)
  prepared = store.open_dir(path)
  logging.info("generated %s users (%s) and reference losses in %.1fs", sizes, path, time.time() - t0)
  return prepared, references


def _records(users: synthetic.Users, names, split: str):
  for i in range(len(users)):
    n = int(users.lengths[i])
    record = {name: users.features[name][i, :n] for name in names}
    record["user_id"] = f"{split}-{i}"
    record["labels"] = {"is_bot": float(users.is_bot[i]), "converted": float(users.converted[i]),
                        "segment": float(users.segment[i])}
    yield record

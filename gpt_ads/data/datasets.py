"""Which data a run trains on: `config.data.dir` (a prepared data set) or, when empty, generated users.

Generated data (gpt_ads.data.synthetic) comes with exact reference losses on the test users: the Bayes-optimal
factorized and joint losses (forward filtering over the discrete latent state) and the unigram loss.
"""

import dataclasses
import time

import numpy as np
from absl import logging

from gpt_ads import features as features_lib
from gpt_ads.data import pipeline, synthetic


@dataclasses.dataclass
class Dataset:
  """Attributes:
    schema: the event schema the data follows.
    counts: {feature: int64 [vocab_size]} value counts over training events (for unigram samplers).
    train, val, test: the splits as grain sources.
    references: exact reference losses on `test` (generated data only), else None.
  """
  schema: features_lib.Schema
  counts: dict[str, np.ndarray]
  train: pipeline.UsersSource
  val: pipeline.UsersSource
  test: pipeline.UsersSource
  references: dict | None = None


def load(config) -> Dataset:
  if config.data.dir:
    raise ValueError(f"config.data.dir={config.data.dir!r}: this version trains on generated data only; "
                     "leave config.data.dir empty")
  return generated(config)


def generated(config) -> Dataset:
  """Draws train / val / test users from the configured process (fixed seeds: same data on every host)."""
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
  train = process.sample(config.data.num_train_users, seed=seed)
  val = process.sample(config.data.num_val_users, seed=seed + 1)
  test = process.sample(config.data.num_test_users, seed=seed + 2)
  references = synthetic.reference_losses(process, train, test)
  logging.info("generated %d/%d/%d users and reference losses in %.1fs", len(train), len(val), len(test),
               time.time() - t0)

  def source(users):
    return pipeline.UsersSource({f.name: users.features[f.name] for f in schema}, users.lengths)

  return Dataset(schema=schema, counts=synthetic.value_counts(train), train=source(train), val=source(val),
                 test=source(test), references=references)

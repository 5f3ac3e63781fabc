"""The event schema: the one source of truth for every categorical feature.

A user's history is a sequence of events; each event carries one id per feature. The schema (a list of
`FeatureSpec`) lives in the ml_collections config (`config.schema.features`) and drives the input embeddings,
the output heads, the losses, the data pipeline and evaluation.

Id conventions, shared by every feature:
  0 = PAD (no event; never predicted, excluded from every softmax),
  1 = OOV (an unknown value; a valid class),
  2 .. vocab_size-1 = real values. For `sampled_softmax` features the real ids are expected to be sorted by
  decreasing frequency (what the data builders write), which is what the `log_uniform` sampler assumes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

PAD_ID = 0
OOV_ID = 1
NUM_RESERVED = 2
# The two batch keys besides the features: segment_ids [b, t] (0 = padding, k > 0 = the row's k-th user) and
# positions [b, t] (restarting at 0 for every user).
SEGMENT_IDS, POSITIONS = "segment_ids", "positions"

LOSS_KINDS = ("softmax", "sampled_softmax")
MODEL_SIDE_KEYS = ("embed_dim", "num_negatives", "sampler", "tied", "weight", "copy_lags")  # set by the config
SAMPLERS = ("uniform", "log_uniform", "unigram", "in_batch")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One categorical feature of an event.

  Attributes:
    name: feature name, also the key of its ids in a batch.
    vocab_size: number of ids including the reserved PAD and OOV ids.
    embed_dim: width of the feature's embedding table (and of its output space for `sampled_softmax`).
    loss: "softmax" (exact cross-entropy) or "sampled_softmax" (shared negatives + contrastive loss).
    num_negatives: negatives shared by the whole batch (sampled_softmax only).
    sampler: "uniform", "log_uniform" (Zipf over frequency-sorted ids), "unigram" (training value counts,
      from the data set) or "in_batch" (the batch's other targets). Every sampler corrects the negatives by
      the log of their exact expected draw count (for "in_batch", the batch's own target frequencies).
    tied: sampled_softmax head scores against the input embedding table (True) or its own table (False).
    weight: multiplier of this feature's term in the training loss (evaluation always reports it unweighted).
    copy_lags: sampled_softmax only: > 0 adds a learned, history-dependent logit bonus to the values of the
      user's last `copy_lags` events (a copy / repeat term, as for retargeted ads: "the same ad again" is
      scored directly instead of through the embedding geometry). 0 = off.
  """
  name: str
  vocab_size: int
  embed_dim: int = 64
  loss: str = "softmax"
  num_negatives: int = 1024
  sampler: str = "log_uniform"
  tied: bool = True
  weight: float = 1.0
  copy_lags: int = 0

  @property
  def sampled(self) -> bool:
    return self.loss == "sampled_softmax"


@dataclasses.dataclass(frozen=True)
class Schema:
  """An ordered, hashable collection of `FeatureSpec`s (hashable so Linen modules can hold it).

  Attributes:
    features: the features in a fixed order (the order of embeddings, heads and metrics).
  """
  features: tuple[FeatureSpec, ...]

  def __post_init__(self):
    object.__setattr__(self, "features", tuple(self.features))
    _validate(self)

  def __iter__(self):
    return iter(self.features)

  def __len__(self):
    return len(self.features)

  def __getitem__(self, name: str) -> FeatureSpec:
    for f in self.features:
      if f.name == name:
        return f
    raise KeyError(f"no feature named {name!r}; schema has {self.names}")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.features)

  @property
  def sampled(self) -> tuple[FeatureSpec, ...]:
    return tuple(f for f in self.features if f.sampled)

  def to_config(self) -> ml_collections.ConfigDict:
    """The inverse of `from_config`: {name: {vocab_size, embed_dim, loss, ...}} in schema order."""
    out = ml_collections.ConfigDict()
    for f in self.features:
      d = dataclasses.asdict(f)
      out[d.pop("name")] = d
    return out

  @classmethod
  def from_config(cls, features: Any) -> "Schema":
    """Builds a schema from `config.schema.features`: a mapping {name: {vocab_size, embed_dim, loss, ...}}.

    A mapping (not a list) so that every field can be overridden on the command line, e.g.
    `--config.schema.features.ad_id.num_negatives=4096`.
    """
    known = {f.name for f in dataclasses.fields(FeatureSpec)} - {"name"}
    items = features.items() if hasattr(features, "items") else ()
    specs = []
    for name, raw in items:
      d = dict(raw.to_dict() if hasattr(raw, "to_dict") else raw)
      unknown = sorted(set(d) - known)
      if unknown:
        raise ValueError(f"config.schema.features.{name} has unknown keys {unknown}; allowed: {sorted(known)}")
      if "vocab_size" not in d:
        raise ValueError(f"config.schema.features.{name} needs 'vocab_size'")
      specs.append(FeatureSpec(name=name, **d))
    return cls(tuple(specs))


def _validate(schema: Schema) -> None:
  if not schema.features:
    raise ValueError("the schema has no features; set config.schema.features")
  seen = set()
  for f in schema.features:
    where = f"feature {f.name!r}"
    if f.name in seen:
      raise ValueError(f"{where} appears twice in the schema; feature names must be unique")
    seen.add(f.name)
    if f.name in (SEGMENT_IDS, POSITIONS):
      raise ValueError(f"{where}: the name is reserved for the batch layout; rename the feature")
    if f.loss not in LOSS_KINDS:
      raise ValueError(f"{where}: loss={f.loss!r} is not one of {LOSS_KINDS}")
    if f.vocab_size <= NUM_RESERVED:
      raise ValueError(f"{where}: vocab_size={f.vocab_size} must exceed the {NUM_RESERVED} reserved ids (PAD, OOV)")
    if f.embed_dim <= 0:
      raise ValueError(f"{where}: embed_dim must be positive")
    if f.sampled:
      if f.sampler not in SAMPLERS:
        raise ValueError(f"{where}: sampler={f.sampler!r} is not one of {SAMPLERS}")
      if f.num_negatives <= 0:
        raise ValueError(f"{where}: num_negatives must be positive")
    if f.copy_lags < 0 or (f.copy_lags and not f.sampled):
      raise ValueError(f"{where}: copy_lags={f.copy_lags} must be 0, or > 0 on a sampled_softmax feature")

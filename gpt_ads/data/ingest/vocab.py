"""Value codes -> feature ids: vocabularies built from TRAINING events only, or hash buckets (--hash_buckets).

Vocabulary: the values seen >= min_count times, the max_vocab most frequent (ties by value string), ids 2.. in
decreasing frequency; anything else is OOV (1). Hashing maps a value to 2 + (blake2b-64(value) mod N) (HASH).
Reused (--vocab_from=DIR, `reuse_feature`): DIR's vocabulary of the same feature as it stands (the same ids
and vocab_size, so a model trained on DIR reads this data set unchanged); values DIR does not know are OOV, or
fall in DIR's hash buckets when it hashed the feature.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt_ads import features as features_lib
from gpt_ads.data.ingest.options import PrepareOptions

HASH = "blake2b-64: int.from_bytes(blake2b(utf8(value), digest_size=8).digest(), 'little')"


def stable_hash(value: str) -> int:
  """A 64-bit hash that is the same on every machine and run (see HASH)."""
  return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


def stable_hashes(values: list[str], prefix: str = "") -> np.ndarray:
  """uint64 [n]: stable_hash(prefix + v) of each value (one loop over hashlib, no Python ints)."""
  head = prefix.encode("utf-8")
  digests = b"".join([hashlib.blake2b(head + v.encode("utf-8"), digest_size=8).digest() for v in values])
  return np.frombuffer(digests, "<u8")


def _per_column(spec: int | dict[str, int], column: str, default: int) -> int:
  if isinstance(spec, dict):
    return int(spec.get(column, spec.get("*", default)))
  return int(spec)


def _vocabulary(counts: np.ndarray, values: list[str], *, min_count: int,
                max_size: int) -> tuple[np.ndarray, list[str]]:
  """(lut [len(values) + 1] code -> id (lut[-1] = missing -> OOV), the values of ids 2.. in id order) from the
  training count of each value code."""
  cand = np.flatnonzero(counts >= max(min_count, 1))
  rank = np.empty(len(cand), np.int64)
  rank[pc.sort_indices(pa.array([values[i] for i in cand], pa.string())).to_numpy()] = np.arange(len(cand))
  top = cand[np.lexsort((rank, -counts[cand]))][:max_size]
  lut = np.full(len(values) + 1, features_lib.OOV_ID, np.int32)
  lut[top] = features_lib.NUM_RESERVED + np.arange(len(top))
  return lut, [values[i] for i in top]


def _hash_lut(values: list[str], buckets: int) -> np.ndarray:
  lut = np.fromiter((features_lib.NUM_RESERVED + stable_hash(v) % buckets for v in values), np.int32, len(values))
  return np.append(lut, features_lib.OOV_ID).astype(np.int32)


def reuse_feature(c: str, values: list[str], prior: dict, o: PrepareOptions):
  """(lut int32 [len(values) + 1] value code -> id (lut[-1]: missing), schema feature dict) of feature column `c`
  encoded with `prior`, the same feature's dict in the schema.json of --vocab_from (checked by
  `check_reusable`)."""
  vocab = prior["vocabulary"]
  if vocab["kind"] == "hash":
    lut = _hash_lut(values, int(vocab["num_buckets"]))
  else:
    index = {v: features_lib.NUM_RESERVED + i for i, v in enumerate(vocab["values"])}
    lut = np.array([index.get(v, features_lib.OOV_ID) for v in values] + [features_lib.OOV_ID], np.int32)
  loss = "sampled_softmax" if c in o.sampled else "softmax"
  return lut, {"name": c, "vocab_size": int(prior["vocab_size"]), "loss": loss,
                      "vocabulary": {**vocab, "from": os.path.abspath(o.vocab_from)}, "source": c}


def check_reusable(o: PrepareOptions, prior: dict[str, dict]) -> None:
  """--vocab_from: every --features column has a reusable vocabulary there, and --hash_buckets agrees."""
  for c in o.features:
    f = prior.get(c)
    if f is None:
      raise ValueError(f"--vocab_from={o.vocab_from}: has no feature {c!r} (it has {sorted(prior)}); drop it from "
                       "--features or prepare without --vocab_from")
    kind = f.get("vocabulary", {}).get("kind")
    if kind not in ("values", "hash"):
      raise ValueError(f"--vocab_from={o.vocab_from}: feature {c!r} has a vocabulary of kind {kind!r}, which "
                       "cannot be reused (only 'values' and 'hash')")
    buckets = f["vocabulary"].get("num_buckets") if kind == "hash" else None
    if c in o.hash_buckets and o.hash_buckets[c] != buckets:
      raise ValueError(f"--hash_buckets={c}:{o.hash_buckets[c]} disagrees with --vocab_from={o.vocab_from}, "
                       f"where {c!r} is {'hashed into ' + str(buckets) + ' buckets' if buckets else 'a vocabulary'}"
                       "; drop it from --hash_buckets")


def encode_feature(c: str, counts: np.ndarray, values: list[str], o: PrepareOptions):
  """(lut int32 [len(values) + 1] value code -> id (lut[-1]: missing), schema feature dict) of feature column
  `c` from the training count of each value code."""
  if c in o.hash_buckets:
    buckets = int(o.hash_buckets[c])
    lut = _hash_lut(values, buckets)
    vocab, size = {"kind": "hash", "num_buckets": buckets, "hash": HASH}, features_lib.NUM_RESERVED + buckets
  else:
    min_count, max_size = _per_column(o.min_count, c, 1), _per_column(o.max_vocab, c, 1_000_000)
    lut, kept = _vocabulary(counts, values, min_count=min_count, max_size=max_size)
    if not kept:
      raise ValueError(f"feature {c!r}: no value occurs {min_count}+ times in the training events; lower "
                       "--min_count")
    vocab = {"kind": "values", "values": kept, "min_count": min_count, "max_size": max_size}
    size = features_lib.NUM_RESERVED + len(kept)
  loss = "sampled_softmax" if c in o.sampled else "softmax"
  return lut, {"name": c, "vocab_size": size, "loss": loss, "vocabulary": vocab, "source": c}

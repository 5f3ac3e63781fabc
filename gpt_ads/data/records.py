"""One user record <-> the bytes stored in the ArrayRecord files: a tf.train.Example proto, as TFDS writes it.

    {"user_id": str, <feature>: int32 [n], "labels": {<label>: float32}}
      <-> Example{features: {"user_id": bytes_list[utf8], <feature>: bytes_list[raw little-endian int32 bytes],
                             "labels/<label>": float_list[1]}}

This is the encoding of the TFDS features of `gpt_ads.data.store` (Text, Tensor(int32, Encoding.BYTES), Scalar
float32 under a FeaturesDict), so `tfds.data_source` reads the files. `encode` writes the proto wire format
directly, map entries in sorted key order: the same bytes as protobuf's deterministic serialization of the
Example TFDS builds (tests/data/records_test.py), ~15x faster than TFDS's serializer, and the same on every
machine and engine (the local and the Beam preparation write identical files).
"""

from __future__ import annotations

import numpy as np

LABEL_PREFIX = "labels/"


def _varint(n: int) -> bytes:
  out = bytearray()
  while n > 0x7F:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _field(payload_len: int) -> bytes:
  """Tag 1 (length-delimited) and the length of a payload."""
  return b"\x0a" + _varint(payload_len)


class Encoder:
  """Encodes the records of one data set (fixed feature and label names) to Example bytes."""

  def __init__(self, feature_names, label_names=()):
    entries = [("user_id", "", "user")] + [(n, n, "ids") for n in feature_names] + [
        (LABEL_PREFIX + n, n, "label") for n in label_names]
    self._entries = sorted(entries)  # (proto key, record key, kind), in serialized order
    self._heads: dict[tuple[str, int], bytes] = {}

  def _head(self, key: str, size: int, kind: bytes) -> bytes:
    """Everything of the map entry for `key` before its value bytes (a bytes_list / float_list of `size`)."""
    head = self._heads.get((key, size))
    if head is None:
      k = key.encode("utf-8")
      inner = _field(size) if kind == b"\x0a" else b"\x0a" + _varint(size)  # BytesList.value / FloatList.value
      value_list = len(inner) + size
      feature = kind + _varint(value_list)  # Feature.bytes_list (1) / float_list (2)
      entry = b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(len(feature) + value_list)
      head = _field(len(entry) + len(feature) + value_list) + entry + feature + inner
      self._heads[(key, size)] = head
    return head

  def _payloads(self, events: int, user_id_bytes: int) -> list[int]:
    """The value bytes of each map entry for a user of `events` events and an id of `user_id_bytes` bytes."""
    return [4 * events if kind == "ids" else 4 if kind == "label" else user_id_bytes for _, _, kind in self._entries]

  def size(self, events: int, user_id_bytes: int) -> int:
    """The length of `encode`'s bytes for a user of `events` events whose id is `user_id_bytes` UTF-8 bytes."""
    return sum(map(len, self._template(events, user_id_bytes))) + sum(self._payloads(events, user_id_bytes))

  def encode(self, user_id: str, ids: dict, labels: dict | None = None) -> bytes:
    """Example bytes of one user: `ids` {feature: int32 [n]}, `labels` {name: float}."""
    n = next((len(ids[name]) for _, name, kind in self._entries if kind == "ids"), 0)
    return next(self.encode_users([user_id], [n], ids, {k: [v] for k, v in (labels or {}).items()}))

  def _template(self, events: int, user_id_bytes: int) -> tuple[bytes, ...]:
    """The head of each map entry for a user of this shape, the record's own length prefix before the first."""
    sizes = self._payloads(events, user_id_bytes)
    heads = [self._head(key, size, b"\x12" if kind == "label" else b"\x0a")
             for (key, _, kind), size in zip(self._entries, sizes)]
    heads[0] = _field(sum(map(len, heads)) + sum(sizes)) + heads[0]
    return tuple(heads)

  def encode_users(self, user_ids, lengths: np.ndarray, ids: dict, labels: dict | None = None):
    """Yields the Example bytes of many users: user k has the next lengths[k] events of every `ids` {feature:
    int32 [sum(lengths)]} (little-endian) and the labels {name: float [users]}[k].

    One dict look-up per user: the entry heads of each (events, id bytes) shape are built once (`_template`)."""
    sources = []  # per entry: ("ids", byte view) / ("user", None) / ("label", bytes of every user's value)
    for _, name, kind in self._entries:
      if kind == "ids":
        sources.append((0, memoryview(np.ascontiguousarray(ids[name], "<i4")).cast("B")))
      elif kind == "user":
        sources.append((1, None))
      else:
        sources.append((2, np.asarray(labels[name], "<f4").tobytes()))
    templates: dict[tuple[int, int], tuple[bytes, ...]] = {}
    ends = (4 * np.cumsum(lengths)).tolist()
    a = 0
    for k, (user, b) in enumerate(zip(user_ids, ends)):
      value = user.encode("utf-8")
      shape = (b - a, len(value))
      heads = templates.get(shape)
      if heads is None:
        heads = templates[shape] = self._template((b - a) // 4, len(value))
      parts = []
      for head, (kind, source) in zip(heads, sources):
        parts.append(head)
        parts.append(source[a:b] if kind == 0 else value if kind == 1 else source[4 * k:4 * k + 4])
      yield b"".join(parts)
      a = b


def decode(serialized: bytes, feature_names, label_names=()) -> dict:
  """{feature: int32 [n], "user_id": bytes, "labels": {name: float}} of one record (any field order)."""
  from tensorflow_datasets.proto import tf_example_pb2
  f = tf_example_pb2.Example.FromString(serialized).features.feature
  out = {k: np.frombuffer(f[k].bytes_list.value[0], "<i4").astype(np.int32) for k in feature_names}
  out["user_id"] = f["user_id"].bytes_list.value[0]
  if label_names:
    out["labels"] = {k: float(f[LABEL_PREFIX + k].float_list.value[0]) for k in label_names}
  return out

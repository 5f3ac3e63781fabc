"""The record codec writes exactly the tf.train.Example bytes TFDS's own serializer gives (deterministic form)."""

import numpy as np

from gpt_ads.data import records, writer


def test_encode_is_tfds_serialization_byte_for_byte_and_decodes_back():
  import tensorflow_datasets as tfds
  names, labels = ["ad_id", "campaign", "time_gap"], ("is_bot", "conv")
  feats = writer.tfds_features(names, labels)
  serializer = tfds.core.example_serializer.ExampleSerializer(feats.get_serialized_info())
  encoder = records.Encoder(names, labels)
  rng = np.random.default_rng(0)
  for i in range(200):
    n = int(rng.integers(1, 400))  # lengths on both sides of the 1- / 2-byte varint boundary
    ids = {k: rng.integers(1, 2**31 - 1, n).astype(np.int32) for k in names}
    user = "ü" * int(rng.integers(0, 200)) + str(i)
    lab = {"is_bot": float(i % 2), "conv": float("nan") if i % 3 else 0.25}
    expected = serializer.get_tf_example(feats.encode_example({"user_id": user, **ids, "labels": lab}))
    got = encoder.encode(user, ids, lab)
    assert got == expected.SerializeToString(deterministic=True)
    back = records.decode(got, names, labels)
    assert back["user_id"] == user.encode()
    for k in names:
      np.testing.assert_array_equal(back[k], ids[k])
    assert back["labels"]["is_bot"] == lab["is_bot"] and np.isnan(back["labels"]["conv"]) == (i % 3 != 0)


def test_without_labels_and_with_an_empty_user_id():
  import tensorflow_datasets as tfds
  feats = writer.tfds_features(["item"])
  serializer = tfds.core.example_serializer.ExampleSerializer(feats.get_serialized_info())
  ids = {"item": np.arange(2, 7, dtype=np.int32)}
  expected = serializer.get_tf_example(feats.encode_example({"user_id": "", **ids}))
  assert records.Encoder(["item"]).encode("", ids) == expected.SerializeToString(deterministic=True)


def test_size_is_the_length_of_the_encoding():
  encoder = records.Encoder(["a", "b"], ("y",))
  for n in (1, 31, 32, 1000, 40_000):
    for user in ("", "u1", "ü" * 100):
      ids = {"a": np.ones(n, np.int32), "b": np.zeros(n, np.int32)}
      assert encoder.size(n, len(user.encode())) == len(encoder.encode(user, ids, {"y": 1.0}))

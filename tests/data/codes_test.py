"""The value encoder of gpt-ads-prepare: the hash-table path gives the exact path's codes, collisions included."""

import numpy as np
import pyarrow as pa
import pytest

from gpt_ads.data.ingest import codes
from gpt_ads.data.ingest.read import MISSING


def _batches(seed: int, count: int = 12, rows: int = 400):
  rng = np.random.default_rng(seed)
  words = [f"v{i}" for i in range(1500)] + ["é", "ñandú", "a\x00", "x" * 40, "NaN", ""]
  for _ in range(count):
    values = [words[i] for i in rng.integers(len(words), size=rows)]
    for i in rng.integers(rows, size=10):
      values[i] = None
    yield pa.array(values, pa.string())


def test_word_and_byte_hashes_agree():
  strings = pa.array(["", None, "a", "a\x00", "é", "abcdefgh", "abcdefghi", "x" * 32, "ñ" * 7], pa.string())
  short = codes.string_hashes(strings)  # every string within 32 bytes: hashed a word at a time
  with_long = codes.string_hashes(pa.concat_arrays([strings, pa.array(["z" * 41])]))[:-1]  # a byte at a time
  np.testing.assert_array_equal(short, with_long)
  np.testing.assert_array_equal(codes.string_hashes(strings.slice(3)), short[3:])
  assert len(set(short[2:].tolist())) == len(strings) - 2  # "" and null hash alike; the rest apart
  assert (short != 0).all()


@pytest.mark.parametrize("dedup_below", [0.0, 0.5, 2.0])  # by row always / as measured / by distinct value
@pytest.mark.parametrize("bits", [64, 2])
def test_the_hash_table_gives_the_exact_codes(monkeypatch, bits, dedup_below):
  monkeypatch.setattr(codes, "TABLE_FROM", 100)
  monkeypatch.setattr(codes, "DEDUP_BELOW", dedup_below)
  hashed = codes.Encoder(MISSING, hash_bits=bits)
  got = [hashed.encode(batch) for batch in _batches(0)]
  monkeypatch.setattr(codes, "TABLE_FROM", 10**9)
  exact = codes.Encoder(MISSING)
  want = [exact.encode(batch) for batch in _batches(0)]
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  assert hashed.values == exact.values and not exact.uses_table
  # 64 bits: no collision, the table stays in use; 2 bits: a collision sends the column back to the exact path.
  assert hashed.uses_table == (bits == 64)


def test_codes_follow_first_appearance_and_missing_is_minus_one():
  enc = codes.Encoder(MISSING)
  np.testing.assert_array_equal(enc.encode(pa.array(["b", "a", None, "b", "NaN", ""])), [0, 1, -1, 0, -1, -1])
  np.testing.assert_array_equal(enc.encode(pa.array(["c", "a"])), [2, 1])
  assert enc.values == ["b", "a", "c"] and enc.slice(1, 5) == ["a", "c"]

"""Exact strings -> dense int32 codes in order of first appearance, over a stream of batches (`Encoder`).

Two ways to the same codes:
- few known values (< `TABLE_FROM`): pyarrow's dictionary_encode of the batch, its distinct values looked up
  among the known ones with pc.index_in. index_in builds a hash of the known values on every call, which at a
  million known values (users, ad ids) costs ~0.3 s a batch;
- past that, a hash table that lives across batches (`_Table`: open addressing over 64-bit string hashes,
  computed and probed vectorized in numpy). Every row's code is then checked EXACTLY: the row's string must
  equal the known value of its code (one pc.take + pc.equal). A hash collision fails that check, and the
  column goes back to the exact pyarrow path for good; a collision can cost time, never a wrong code.
Both give new values their codes in order of first appearance within the batch, so the codes are the same
whichever path ran and wherever the batches were cut.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TABLE_FROM = 1 << 16  # known values from which a column uses the persistent hash table
DEDUP_BELOW = 0.5  # a batch with fewer distinct values than this share of its rows is encoded by distinct value
_MUL = np.uint64(0x9E3779B97F4A7C15)  # the polynomial hash's base (odd; golden-ratio constant)
_PADDED_WORDS = 4  # strings of up to 32 bytes are hashed a word at a time


def _mix(h: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: every input bit moves every output bit (the table indexes by the low bits)."""
  h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return h ^ (h >> np.uint64(31))


def string_hashes(strings: pa.Array, bits: int = 64) -> np.ndarray:
  """uint64 [n]: a hash of each string's UTF-8 bytes (nulls hash as ""), masked to `bits` bits (tests force
  collisions with few bits); never 0, which marks an empty table slot.

  h = mix(Σ_i word_i · MUL^(i+1) mod 2^64, xor the byte length), word_i = bytes 8i..8i+7 as a little-endian
  uint64 (the last one zero-padded). Strings of up to `_PADDED_WORDS` words are padded to one width by pyarrow
  and hashed a word at a time; longer ones a byte at a time, to the same value.
  """
  n = len(strings)
  lengths = pc.binary_length(strings).to_numpy(zero_copy_only=False)
  lengths = np.nan_to_num(lengths, nan=0).astype(np.int64) if strings.null_count else lengths.astype(np.int64)
  words = -(-int(lengths.max(initial=0)) // 8)  # the longest string's words
  powers = np.cumprod(np.full(max(words, 1), _MUL, np.uint64))  # [words] MUL^(i+1)
  if words <= _PADDED_WORDS:
    full = pc.fill_null(strings, "") if strings.null_count else strings
    padded = pc.ascii_rpad(full, width=8 * max(words, 1), padding="\x00")  # pads bytes, whatever the text
    start = int(np.frombuffer(padded.buffers()[1], np.int32, 1, padded.offset * 4)[0])
    w = np.frombuffer(padded.buffers()[2], "<u8", n * max(words, 1), start).reshape(n, max(words, 1))
    h = w[:, 0] * powers[0]
    for i in range(1, words):
      h += w[:, i] * powers[i]
  else:
    offsets = np.frombuffer(strings.buffers()[1], np.int32, n + 1, strings.offset * 4).astype(np.int64)
    data = np.frombuffer(strings.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]  # [bytes]
    position = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)  # [bytes]
    byte = (data.astype(np.uint64) << (np.uint64(8) * (position & 7).astype(np.uint64))) * powers[position >> 3]
    total = np.concatenate([[np.uint64(0)], np.cumsum(byte)])
    h = total[offsets[1:] - offsets[0]] - total[offsets[:-1] - offsets[0]]
  h = _mix(h ^ lengths.astype(np.uint64))
  if bits < 64:
    h &= np.uint64((1 << bits) - 1)
  return np.where(h == 0, np.uint64(1), h)


def missing_mask(strings: pa.Array, missing: pa.Array) -> np.ndarray:
  """bool [n]: null or one of the `missing` strings."""
  return pc.or_kleene(pc.is_null(strings), pc.is_in(strings, value_set=missing)).to_numpy(zero_copy_only=False)


class _Table:
  """uint64 hash -> int32 code; linear probing in power-of-two arrays kept at most half full; no deletion."""

  def __init__(self, capacity: int = 1 << 17):
    self.keys = np.zeros(capacity, np.uint64)  # 0 = empty
    self.codes = np.zeros(capacity, np.int32)
    self.size = 0

  def lookup(self, h: np.ndarray) -> np.ndarray:
    """int32 [n]: the code of each hash, -1 where absent."""
    mask = np.uint64(len(self.keys) - 1)
    out = np.full(len(h), -1, np.int32)
    slot = (h & mask).astype(np.int64)
    todo = np.arange(len(h))
    while len(todo):
      key = self.keys[slot]
      hit = key == h[todo]
      out[todo[hit]] = self.codes[slot[hit]]
      go_on = ~hit & (key != 0)  # an occupied slot of another key: probe the next one
      todo, slot = todo[go_on], (slot[go_on] + 1) & int(mask)
    return out

  def insert(self, h: np.ndarray, codes: np.ndarray) -> None:
    """Adds distinct hashes absent from the table."""
    if 2 * (self.size + len(h)) > len(self.keys):
      old = self.keys != 0
      keys, old_codes = self.keys[old], self.codes[old]
      capacity = len(self.keys)
      while 2 * (self.size + len(h)) > capacity:
        capacity *= 2
      self.keys, self.codes, self.size = np.zeros(capacity, np.uint64), np.zeros(capacity, np.int32), 0
      self.insert(keys, old_codes)
    mask = len(self.keys) - 1
    slot = (h & np.uint64(mask)).astype(np.int64)
    todo = np.arange(len(h))
    while len(todo):
      free = np.flatnonzero(self.keys[slot] == 0)
      # Of the hashes that found the same free slot, one takes it (the scatter's last write); the rest probe on.
      self.keys[slot[free]] = h[todo[free]]
      won = free[self.keys[slot[free]] == h[todo[free]]]
      self.codes[slot[won]] = codes[todo[won]]
      rest = np.ones(len(todo), bool)
      rest[won] = False
      todo, slot = todo[rest], (slot[rest] + 1) & mask
    self.size += len(h)


class Encoder:
  """Maps the exact strings of one column to dense int32 codes in order of first appearance; missing -> -1.

  Args:
    missing: the strings that mean a missing value (as null does).
    hash_bits: bits of the table's string hash (64; fewer only to test the collision fallback).
  """

  def __init__(self, missing=("",), *, hash_bits: int = 64):
    self._missing = pa.array(list(missing), pa.string())
    self._hash_bits = hash_bits
    self._known = pa.array([], pa.string())  # [codes] the values, in code order
    self._values: list[str] | None = []
    self._table: _Table | None = None
    self._exact_only = False  # set when a hash collision was seen
    self._dedup = True  # whether the next batch goes through the table by distinct value (`_encode_hashed`)

  def __len__(self) -> int:
    return len(self._known)

  @property
  def uses_table(self) -> bool:
    """Whether the batches now go through the persistent hash table."""
    return self._table is not None

  def encode(self, strings: pa.Array) -> np.ndarray:
    """int32 [n]: the code of each string (new values get the next codes); -1 for null and `missing`."""
    if strings.type != pa.string():
      strings = strings.cast(pa.string())
    if self._table is None and not self._exact_only and len(self._known) >= TABLE_FROM:
      self._table = _Table()
      self._table.insert(string_hashes(self._known, self._hash_bits), np.arange(len(self._known), dtype=np.int32))
    if self._table is not None:
      codes = self._encode_hashed(strings)
      if codes is not None:
        return codes
      self._table, self._exact_only = None, True
    return self._encode_exact(strings)

  def _commit(self, new_values: pa.Array) -> None:
    if len(new_values):
      self._known = pa.concat_arrays([self._known, new_values])
      self._values = None

  def _encode_exact(self, strings: pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(strings, null_encoding="encode")
    d = enc.dictionary  # the batch's distinct values, first appearance first (null among them)
    missing = missing_mask(d, self._missing)
    lut = pc.index_in(d, value_set=self._known).to_numpy(zero_copy_only=False)  # NaN where new
    new = np.isnan(lut) & ~missing
    lut = np.where(np.isnan(lut) | missing, -1, lut).astype(np.int32)
    lut[new] = len(self._known) + np.arange(int(new.sum()), dtype=np.int32)
    self._commit(d.filter(pa.array(new)))
    return lut[enc.indices.to_numpy(zero_copy_only=False)]  # [n]

  def _encode_hashed(self, batch: pa.Array) -> np.ndarray | None:
    """The codes through the table, or None (nothing changed) when a collision made a row's code wrong.

    Where a batch repeats its values (an ad many times a batch), only its distinct values are hashed, looked up
    and checked (pyarrow's dictionary_encode, first appearance first, so new codes come in the same order);
    where most values are distinct (users of a shuffled log) that costs more than it saves, and every row goes
    through the table. The share of distinct values in this batch picks the way for the next one."""
    if self._dedup:
      enc = pc.dictionary_encode(batch, null_encoding="encode")
      codes = self._encode_rows(enc.dictionary)
      if codes is None:
        return None
      self._dedup = len(codes) < DEDUP_BELOW * len(batch)
      return codes[enc.indices.to_numpy(zero_copy_only=False)]
    codes = self._encode_rows(batch)
    if codes is not None:
      distinct = np.count_nonzero(np.bincount(codes[codes >= 0], minlength=len(self._known)))
      self._dedup = distinct < DEDUP_BELOW * len(batch)
    return codes

  def _encode_rows(self, strings: pa.Array) -> np.ndarray | None:
    h = string_hashes(strings, self._hash_bits)  # [n]
    missing = missing_mask(strings, self._missing)
    codes = np.where(missing, -1, self._table.lookup(h))  # [n]
    new_rows = np.flatnonzero((codes < 0) & ~missing)
    new_hashes, first, inverse = np.unique(h[new_rows], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # the new values by first appearance
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes[new_rows] = len(self._known) + rank[inverse]
    new_values = strings.take(pa.array(new_rows[first[order]]))
    candidate = pa.concat_arrays([self._known, new_values])
    present = np.flatnonzero(codes >= 0)
    rows = strings if len(present) == len(strings) else strings.take(pa.array(present))
    same = pc.all(pc.equal(rows, candidate.take(pa.array(codes[present])))).as_py()
    if same is False:  # (None: no present rows)
      return None
    self._table.insert(new_hashes[order], len(self._known) + np.arange(len(order), dtype=np.int32))
    self._commit(new_values)
    return codes

  @property
  def values(self) -> list[str]:
    """[codes] the value of each code."""
    if self._values is None:
      self._values = self._known.to_pylist()
    return self._values

  def slice(self, lo: int, hi: int) -> list[str]:
    """The values of codes [lo, hi) (without building the list of every value)."""
    return self._known.slice(lo, max(min(hi, len(self._known)) - lo, 0)).to_pylist()

  @property
  def codes(self) -> dict[str, int]:
    """{value: code}."""
    return {v: i for i, v in enumerate(self.values)}

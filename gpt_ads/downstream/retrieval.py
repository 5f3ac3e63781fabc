"""Next-item retrieval metrics: rank every value of a feature for each user's next event; HR@k and NDCG@k.

The leave-one-out protocol of the sequential-recommendation literature (and of `benchmarks/ml1m.py`): for each
user record of a split, the input is the record without its last event, the target is the last event's value of
`feature`; every valid value (ids 2 .. vocab_size-1) is ranked by the model's next-event score, values already in
the input are excluded (`exclude_history`), and the target's rank r (0 = top) gives HR@k = [r < k] and
NDCG@k = [r < k] / log2(r + 2). Ties count against the target (rank = number of values scored >= it, minus one),
so a constant model scores no better than chance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpt_ads import api, features
from gpt_ads.data import pipeline


def ranks(params, batch: dict, history: jax.Array, targets: jax.Array, *, feature: str, schema, config,
          exclude_history: bool = True) -> jax.Array:
  """The 0-based rank [b] of targets [b] among all valid values of `feature` after each row of `batch`.

  history: [b, h] ids already seen by each user (PAD-padded), excluded from the ranking when `exclude_history`.
  """
  spec = schema[feature]
  scores = api.score(params, batch, feature, jnp.arange(spec.vocab_size), schema=schema, config=config)  # [b, v]
  valid = jnp.arange(spec.vocab_size) >= features.NUM_RESERVED
  scores = jnp.where(valid[None], scores, -jnp.inf)
  target_score = jnp.take_along_axis(scores, targets[:, None], axis=1)  # [b, 1]
  if exclude_history:
    seen = jnp.zeros(scores.shape, bool).at[jnp.arange(scores.shape[0])[:, None], history].set(True)
    seen = seen.at[jnp.arange(scores.shape[0]), targets].set(False)  # a repeated target stays rankable
    scores = jnp.where(seen, -jnp.inf, scores)
  return jnp.sum(scores >= target_score, axis=1) - 1


def evaluate(params, source, *, feature: str, schema, config, ks=(10, 50, 200), batch_size: int = 256,
             max_users: int | None = None, exclude_history: bool = True, log=None) -> dict:
  """HR@k / NDCG@k over the users of `source` (records of the prepared data set): {"hr@10": ..., "ndcg@10": ...,
  "users": n}. The model sees each input's last `config.model.max_len` events; history exclusion uses all.

  The rows of each batch are split over this process's devices (as many as divide `batch_size`): on a CPU host
  with one XLA device per core that ranks on every core.
  """
  length = config.model.max_len
  devices = jax.local_devices()
  devices = devices[:max(k for k in range(1, len(devices) + 1) if batch_size % k == 0)]
  mesh = jax.sharding.Mesh(np.array(devices), ("rows",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rank_fn = jax.jit(functools.partial(ranks, feature=feature, schema=schema, config=config,
                                      exclude_history=exclude_history),
                    in_shardings=(replicated, rows, rows, rows), out_shardings=rows)
  params = jax.device_put(params, replicated)
  n = len(source) if max_users is None else min(max_users, len(source))
  all_ranks = []
  for start in range(0, n, batch_size):
    records = [r for r in pipeline.read(source, range(start, min(start + batch_size, n))) if len(r[feature]) >= 2]
    if not records:
      continue
    events = {f.name: [r[f.name][:-1] for r in records] for f in schema}
    batch = api.make_batch(schema, events, length=length)
    # Fixed batch rows (padding rows rank nobody) and history width rounded up to 256: few compiled shapes.
    padded = {k: np.pad(v, ((0, batch_size - len(records)), (0, 0))) for k, v in batch.items()}
    hist_len = max(len(r[feature]) - 1 for r in records)
    history = np.zeros((batch_size, hist_len + (-hist_len % 256)), np.int32)
    targets = np.zeros(batch_size, np.int32)
    for i, r in enumerate(records):
      history[i, :len(r[feature]) - 1] = r[feature][:-1]
      targets[i] = r[feature][-1]
    all_ranks.append(np.asarray(rank_fn(params, padded, history, targets))[:len(records)])
    if log is not None:
      log(f"ranked {min(start + batch_size, n):,} / {n:,} users")
  return metrics(np.concatenate(all_ranks), ks)


def metrics(r: np.ndarray, ks=(10, 50, 200)) -> dict:
  """0-based ranks [n] -> {"users": n, "hr@k": mean [r < k], "ndcg@k": mean [r < k] / log2(r + 2)}."""
  out = {"users": int(len(r))}
  for k in ks:
    hit = r < k
    out[f"hr@{k}"] = float(np.mean(hit))
    out[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0)))
  return out

"""The public API for other JAX projects: load a trained run, then pure functions of (params, batch).

    from gpt_ads import api
    params, schema, config = api.load("/tmp/gpt_ads_demo")
    batch = api.make_batch(schema, {"event_type": [[3, 4, 2]], "ad_id": [[17, 17, 250]], ...}, length=64)
    logits, hidden = api.apply(params, batch, schema=schema, config=config)
    user = api.embed(params, batch, schema=schema, config=config, pooling="mean")        # [b, d]
    ev = api.user_evidence(params, batch, schema=schema, config=config)                 # {key: [b] / [b, d]}
    logp = api.score(params, batch, "ad_id", candidates, schema=schema, config=config)   # [b, n]
    logp = api.score(params, batch, "ad_id", candidates, given={"event_type": clicks},   # chain: ads given
                     schema=schema, config=config)                                       # the event's type
    more = api.sample(params, batch, jax.random.key(0), num_events=5, schema=schema, config=config)
    api.export_run("/tmp/gpt_ads_demo", "/tmp/model.zip")    # embed + score as jax.export (gpt-ads-export)
    art = api.read_export("/tmp/model.zip")                   # {"embed", "score": jax.export.Exported, "meta"}

Every function is pure in (params, batch, rng) and composes with `jax.jit`, `jax.vmap` and `jax.grad`; bind
`schema` / `config` (static) with `functools.partial` before jitting.

Batch layout (what `make_batch` builds): {feature: int32 [b, t] ids, "segment_ids": [b, t] (1 on a row's events,
0 on padding), "positions": [b, t]}; each row is ONE user's events, left-aligned. "The next event" of a row is the
one after its last event. Ids follow the schema's conventions (0 PAD, 1 OOV, 2.. values; the prepared data set's
schema.json maps raw values to ids).
"""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from gpt_ads import features
from gpt_ads.model import chain, from_config, init_params
from gpt_ads.model.heads import NEG_INF, copy_bonus, copy_inputs, output_table, take_at, valid_ids
from gpt_ads.objective import evidence as evidence_lib
from gpt_ads.objective import losses
from gpt_ads.training import checkpoint, optim, sharding, train_state
from gpt_ads.training import workdir as workdir_lib

Schema, FeatureSpec = features.Schema, features.FeatureSpec
run_data_dir = workdir_lib.run_data_dir  # the prepared data set a run trained on ("" if unknown)
save_run_file = workdir_lib.save_run_file  # what `load` reads besides the checkpoint (the trainer writes it)


def load(workdir: str, step: int | None = None):
  """-> (params, schema, config) of the run in `workdir` (its latest checkpoint, or `step`), on one device."""
  config, schema, _ = workdir_lib.read_run_file(workdir)
  model = from_config(schema, config)
  tx, _ = optim.make(config.train)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
  abstract, _ = train_state.abstract_and_shardings(model, tx, mesh, sharding.rules(config))
  if not os.path.isdir(workdir_lib.checkpoint_dir(workdir)):
    raise ValueError(f"{workdir} has no checkpoints/: the run has not saved a checkpoint yet")
  ckpt = checkpoint.Checkpointer(workdir, keep=1, async_save=False)
  try:
    state, _ = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  if state is None:
    raise ValueError(f"{workdir}/checkpoints holds no checkpoint: the run has not saved one yet")
  return state.params, schema, config


def init(rng: jax.Array, *, schema: features.Schema, config):
  """Fresh parameters (unsharded) for `schema` and `config` (the run config, or a ModelConfig)."""
  import flax.linen as nn
  model = from_config(schema, config)
  return nn.unbox(init_params(model, rng))


def make_batch(schema: features.Schema, events: dict, *, length: int) -> dict[str, np.ndarray]:
  """A batch from per-user id lists: events[feature] = [[ids of user 0], [ids of user 1], ...] (same lengths per
  user across features), padded to `length`; users longer than `length` keep their last `length` events."""
  users = [list(map(list, events[f.name])) for f in schema]
  num = len(users[0])
  out = {f.name: np.zeros((num, length), np.int32) for f in schema}
  seg = np.zeros((num, length), np.int32)
  for i in range(num):
    n = {len(u[i]) for u in users}
    if len(n) != 1:
      raise ValueError(f"user {i}: the features have different numbers of events {sorted(n)}")
    n = min(n.pop(), length)
    for f, u in zip(schema, users):
      out[f.name][i, :n] = u[i][len(u[i]) - n:]
    seg[i, :n] = 1
  out[features.SEGMENT_IDS] = seg
  out[features.POSITIONS] = np.where(seg > 0, np.arange(length, dtype=np.int32)[None], 0).astype(np.int32)
  return out


def _forward(params, batch, schema, config, at=None, given=None, hidden=None):
  return from_config(schema, config).apply({"params": params}, batch, at=at, given=given, hidden=hidden)


def _candidate_logits(params, outputs, spec: features.FeatureSpec, ids: jax.Array) -> jax.Array:
  """Unnormalized logits [b, t, n] of candidate ids [n] of a sampled feature (dot product + bias + copy term)."""
  table, bias = output_table(params, spec)
  logits = jnp.einsum("bte,ne->btn", outputs[spec.name], jnp.take(table, ids, axis=0)) + jnp.take(bias, ids)
  copy = copy_inputs(outputs, spec)
  return logits if copy is None else logits + copy_bonus(*copy, ids)


def apply(params, batch, *, schema: features.Schema, config):
  """-> ({feature: log-probabilities [b, t, v] of its value in event t + 1}, hidden [b, t, d]).

  Under the "chain" factorization a feature's distribution is conditioned on event t + 1's values of the features
  before it in `event_order`, read from `batch` (teacher forcing; at a row's last event there are none: use
  `score(given=)` or `sample`). Full vocabulary at every position: O(b t v) memory. For large vocabularies use
  `score`."""
  outputs, hidden = _forward(params, batch, schema, config)
  logp = {}
  for f in schema:
    if f.sampled:
      v = output_table(params, f)[0].shape[0]
      logits = _candidate_logits(params, outputs, f, jnp.arange(v))
      logits = jnp.where(valid_ids(f.vocab_size, v), logits, NEG_INF)
    else:
      logits = outputs[f.name]
    logp[f.name] = jax.nn.log_softmax(logits, axis=-1)
  return logp, hidden


def _last_index(batch) -> jax.Array:
  """[b] the position of each row's last event."""
  return evidence_lib.last_index(batch[features.SEGMENT_IDS])


def embed(params, batch, *, schema: features.Schema, config, pooling: str = "last") -> jax.Array:
  """User vectors [b, d]: the hidden state after the last event ("last") or the mean over events ("mean")."""
  _, hidden = _forward(params, batch, schema, config)
  return evidence_lib.pool(hidden, batch[features.SEGMENT_IDS], pooling)


def user_evidence(params, batch, *, schema: features.Schema, config, background: dict | None = None,
                  vocab_chunk: int = 4096) -> dict[str, jax.Array]:
  """Per-user evidence in one forward pass (gpt_ads.objective.evidence): for every feature the mean and spread of the
  per-event exact NLL, the mean predictive entropy, the gain over `background` ({feature: [v] log p}, e.g.
  `evidence.background_log_probs` of the training counts), for copy features the mean predicted repeat
  probability; "num_predicted", user vectors "vector/last", "vector/mean" and the value histograms of the
  low-cardinality features "counts/<f>" [b, v], "transitions/<f>" [b, v * v]. -> {key: [b], [b, d] or [b, m]}."""
  outputs, hidden = _forward(params, batch, schema, config)
  return evidence_lib.user_evidence(params, outputs, hidden, batch, schema=schema, chunk=vocab_chunk,
                                    background=background)


def conditioning(feature: str, *, schema: features.Schema, config) -> tuple[str, ...]:
  """The features of the same event whose values `feature`'s distribution is conditioned on, what
  `score(feature, given=)` needs: those before it in `event_order` under "chain", none under "independent"."""
  return chain.earlier(schema, from_config(schema, config).cfg)[feature]


MAX_SUMMED_OUT = 4096  # combinations of not-given earlier values `score` sums out exactly, at most


def _check_given(schema: features.Schema, config, feature: str, given: dict) -> tuple[dict, tuple[str, ...]]:
  """-> (the `given` values `feature`'s head conditions on, the conditioning features not given, to be summed
  out). Under "independent" both are empty: the model treats an event's features as independent. A clear error
  for what cannot be conditioned on or summed out."""
  cfg = from_config(schema, config).cfg
  unknown = sorted(set(given) - set(schema.names) | ({feature} & set(given)))
  if unknown:
    raise ValueError(f"given={unknown}: name other features of the schema {list(schema.names)} than {feature!r}")
  if cfg.event_factorization != "chain":
    return {}, ()
  needs = conditioning(feature, schema=schema, config=config)
  missing, later = tuple(n for n in needs if n not in given), [n for n in given if n not in needs]
  order = f"under the chain order {list(chain.event_order(schema, cfg))}"
  if later:
    raise ValueError(f"score({feature!r}, given={sorted(given)}): {order} {later} come after it; set "
                     f"config.model.event_order so that the given features come first")
  sampled = [n for n in missing if schema[n].sampled]
  combos = int(np.prod([schema[n].vocab_size - 1 for n in missing]))
  if sampled or combos > MAX_SUMMED_OUT:
    raise ValueError(f"score({feature!r}, given={sorted(given)}): {order} {feature!r} is conditioned on "
                     f"{list(needs)}; {sampled or missing} cannot be summed out exactly "
                     f"({'sampled features' if sampled else f'{combos} combinations > {MAX_SUMMED_OUT}'}): give them")
  return {n: given[n] for n in needs if n in given}, missing


def _log_probs(params, last, spec: features.FeatureSpec, cand: jax.Array, vocab_chunk: int) -> jax.Array:
  """log p of candidate ids ([n] or [b, n]) from the heads at one position (`last`, [b, 1, ...]) -> [b, n]."""
  if not spec.sampled:
    logp = jax.nn.log_softmax(last[spec.name][:, 0], axis=-1)  # [b, v]
    return jnp.take_along_axis(logp, jnp.broadcast_to(cand, (logp.shape[0],) + cand.shape[-1:]), axis=1)
  table, bias = output_table(params, spec)
  copy = copy_inputs(last, spec)
  log_z = losses.log_normalizer_chunked(query=last[spec.name], table=table, bias=bias, vocab_size=spec.vocab_size,
                                        chunk=vocab_chunk, copy=copy)[:, 0]  # [b]
  if cand.ndim == 1:
    logits = _candidate_logits(params, last, spec, cand)[:, 0]  # [b, n]
  else:  # per-row candidates: score row i against its own ids
    logits = jax.vmap(lambda o, c: _candidate_logits(params, o, spec, c)[0, 0])(
        jax.tree.map(lambda x: x[:, None], last), cand)
  logits = jnp.where((cand > features.PAD_ID) & (cand < spec.vocab_size), logits, -jnp.inf)
  return logits - log_z[:, None]


def score(params, batch, feature: str, candidates: jax.Array, *, schema: features.Schema, config,
          given: dict | None = None, vocab_chunk: int = 4096) -> jax.Array:
  """log p(next event's `feature` = c | history[, given]) for candidate ids c: candidates [n] or [b, n] -> [b, n].

  `given` ({feature: [b] ids} of the next event) conditions on some of the event's other features (e.g. ad ids
  given event type = click). Under "chain" these are features before `feature` in `event_order`; the ones
  before it that are not given are summed out exactly (softmax features, at most MAX_SUMMED_OUT combinations:
  one pass of the heads per combination), so without `given` this is the marginal p(feature = c | history)
  under both factorizations. Under "independent" `given` changes nothing (the model's features are independent
  given the history). Exact: normalized over the whole vocabulary (in `vocab_chunk` chunks for sampled
  features, so a 1M-id vocabulary costs O(b · chunk) memory)."""
  spec = schema[feature]
  given, missing = _check_given(schema, config, feature, given or {})
  cand = jnp.asarray(candidates, jnp.int32)
  at = _last_index(batch)
  last, hidden = _forward(params, batch, schema, config, at=at, given=given)  # heads at the last event
  if not missing:
    return _log_probs(params, last, spec, cand, vocab_chunk)
  # Sum out the missing earlier values m: p(c | h, g) = Σ_m p(m, g | h) p(c | h, m, g) / Σ_m p(m, g | h), each
  # p(m, g | h) the product of the chain factors of the conditioning features, one heads pass per m.
  needs = conditioning(feature, schema=schema, config=config)
  grid = np.stack(np.meshgrid(*[np.arange(1, schema[n].vocab_size) for n in missing], indexing="ij"), -1)
  rows = at.shape[0]

  def one(values):  # [len(missing)] -> ([b] log p(m, g | h), [b, n] log p(c | h, m, g))
    full = {**given, **{n: jnp.full((rows,), values[i], jnp.int32) for i, n in enumerate(missing)}}
    heads, _ = _forward(params, batch, schema, config, at=at, given=full, hidden=hidden)
    prior = sum(_log_probs(params, heads, schema[n], jnp.asarray(full[n]).reshape(rows, 1), vocab_chunk)[:, 0]
                for n in needs)
    return prior, _log_probs(params, heads, spec, cand, vocab_chunk)

  prior, cond = jax.lax.map(one, jnp.asarray(grid.reshape(-1, len(missing)), jnp.int32))  # [m, b], [m, b, n]
  joint = jax.nn.logsumexp(prior[:, :, None] + cond, axis=0)  # [b, n]
  return joint - jax.nn.logsumexp(prior, axis=0)[:, None]


def _sample_feature(rng, logits, temperature: float, top_k: int):
  """One id per row from logits [b, v] with temperature and (top_k > 0) top-k truncation."""
  logits = logits / max(temperature, 1e-6)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _next_logits(params, last, spec: features.FeatureSpec) -> jax.Array:
  """[b, v] logits of a feature's next value from the heads at one position (`last`), invalid ids at -inf."""
  if spec.sampled:
    v = output_table(params, spec)[0].shape[0]
    logits = _candidate_logits(params, last, spec, jnp.arange(v))[:, 0]
  else:
    logits, v = last[spec.name][:, 0], last[spec.name].shape[-1]
  return jnp.where(valid_ids(spec.vocab_size, v), logits, -jnp.inf)


def sample(params, batch, rng: jax.Array, *, num_events: int, schema: features.Schema, config,
           temperature: float = 1.0, top_k: int = 0):
  """Appends `num_events` generated events to every row and returns the extended batch. Each event is drawn
  from the model's own next-event distribution: under "independent" every feature from the hidden state; under
  "chain" feature by feature in `event_order`, each given the values drawn before it (coherent events: a
  campaign that owns the drawn ad). The decoder runs once per event. Rows must have room: events past the batch
  length are dropped."""
  num_events = int(num_events)
  cfg = from_config(schema, config).cfg
  order = chain.event_order(schema, cfg) if cfg.event_factorization == "chain" else schema.names
  index = {f.name: j for j, f in enumerate(schema)}

  def step(i, carry):
    b, key = carry
    idx = _last_index(b)
    last, hidden = _forward(params, b, schema, config, at=idx)  # heads at the last event: [b, 1, ...]
    new_pos = idx + 1
    rows = jnp.arange(idx.shape[0])
    drawn = {}
    for k, name in enumerate(order):
      if k and cfg.event_factorization == "chain":  # the heads again, given the values drawn so far
        last, _ = _forward(params, b, schema, config, at=idx, given=drawn, hidden=hidden)
      j = index[name]
      drawn[name] = _sample_feature(jax.random.fold_in(jax.random.fold_in(key, i), j),
                                    _next_logits(params, last, schema[name]), temperature, top_k)
    for name, ids in drawn.items():
      b = {**b, name: b[name].at[rows, new_pos].set(ids, mode="drop")}
    b[features.SEGMENT_IDS] = b[features.SEGMENT_IDS].at[rows, new_pos].set(b[features.SEGMENT_IDS][:, 0], mode="drop")
    b[features.POSITIONS] = b[features.POSITIONS].at[rows, new_pos].set(take_at(b[features.POSITIONS], idx)[:, 0] + 1, mode="drop")
    return b, key

  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  out, _ = jax.lax.fori_loop(0, num_events, step, (batch, rng))
  return out


# ---- export: the model as a jax.export artifact that needs only jax ------------------------------------------
def export_run(workdir: str, out: str, *, feature: str | None = None, given: list[str] | tuple = (),
               pooling: str = "last", length: int = 0) -> dict:
  """Writes the run's `embed` and `score` as a jax.export artifact (the format: gpt_ads.cli.export); returns
  its meta."""
  params, schema, config = load(workdir)
  feature = feature or next((f.name for f in schema if f.sampled), schema.features[0].name)
  if feature not in [f.name for f in schema]:
    raise ValueError(f"--feature={feature!r} is not in the run's schema {[f.name for f in schema]}")
  length = length or int(config.model.max_len)
  if not 1 <= length <= config.model.max_len:
    raise ValueError(f"--length={length} must be in 1..model.max_len={config.model.max_len}")
  inputs = [f.name for f in schema] + [features.SEGMENT_IDS, features.POSITIONS]
  b, n = jax.export.symbolic_shape("b, n")
  row = jax.ShapeDtypeStruct((b, length), np.int32)

  def as_batch(arrays):
    return dict(zip(inputs, arrays))

  embed_fn = jax.jit(lambda *arrays: embed(params, as_batch(arrays), schema=schema, config=config,
                                           pooling=pooling))
  given = list(given)
  names = [f.name for f in schema]
  if set(given) - set(names):
    raise ValueError(f"--given={','.join(given)}: {sorted(set(given) - set(names))} are not in the run's schema "
                     f"{names}")
  score_fn = jax.jit(lambda cands, *arrays: score(
      params, as_batch(arrays[:len(inputs)]), feature, cands, schema=schema, config=config,
      given=dict(zip(given, arrays[len(inputs):]))))
  score(params, make_batch(schema, {n: [[2]] for n in names}, length=length), feature,
        np.array([2], np.int32), schema=schema, config=config,
        given={g: np.array([2], np.int32) for g in given})  # a bad --given fails here, with score's message
  exported_embed = jax.export.export(embed_fn)(*[row] * len(inputs))
  exported_score = jax.export.export(score_fn)(jax.ShapeDtypeStruct((n,), np.int32), *[row] * len(inputs),
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


def read_export(path: str) -> dict:
  """{"embed": jax.export.Exported, "score": jax.export.Exported, "meta": dict} from an `export_run` artifact."""
  with zipfile.ZipFile(path) as z:
    return {"embed": jax.export.deserialize(bytearray(z.read("embed.bin"))),
            "score": jax.export.deserialize(bytearray(z.read("score.bin"))),
            "meta": json.loads(z.read("meta.json"))}


__all__ = ["FeatureSpec", "Schema", "apply", "conditioning", "embed", "export_run", "init", "load", "make_batch",
           "read_export", "run_data_dir", "sample", "save_run_file", "score", "user_evidence"]

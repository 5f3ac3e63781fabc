"""The "chain" event factorization: the exact joint by the chain rule, its masking, and the API under it."""

import functools
import itertools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import subprocess_env, tiny_config
from gpt_ads import api, features
from gpt_ads.model import Model, ModelConfig, chain
from gpt_ads.model.model import dummy_batch
from gpt_ads.objective import objective
from numerics import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A schema small enough to enumerate every event: 4 x 5 x 3 valid values (OOV included), a sampled feature
# with a copy term in the middle of the order.
TINY_SCHEMA = features.Schema((
    features.FeatureSpec("event_type", 5, 8, loss="softmax"),
    features.FeatureSpec("ad_id", 6, 8, loss="sampled_softmax", num_negatives=4, copy_lags=1),
    features.FeatureSpec("device", 4, 8, loss="softmax")))
ORDER = "device,ad_id"  # -> device, ad_id, event_type


def _model(backbone="transformer", order=ORDER, schema=TINY_SCHEMA):
  cfg = ModelConfig(d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=8, backbone=backbone,
                    event_factorization="chain", event_order=order)
  model = Model(schema, cfg)
  params = nn.unbox(model.init(jax.random.key(0), dummy_batch(schema, 1, 8))["params"])
  # Random (not zero) output biases and copy gates, so that every factor is far from uniform.
  keys = iter(jax.random.split(jax.random.key(1), 64))
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.random.normal(next(keys), x.shape) if p[-1].key == "bias" else x, params)
  return model, params


def _batch(schema, b, t, seed=0):
  rng = np.random.default_rng(seed)
  batch = {f.name: rng.integers(1, f.vocab_size, (b, t)).astype(np.int32) for f in schema}
  batch["segment_ids"] = np.ones((b, t), np.int32)
  batch["positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  return batch


def _event_nll(model, params, batch, pos):
  """-> [b] the exact NLL of event pos + 1 (summed over features) at every row."""
  outputs, _ = model.apply({"params": params}, batch)
  nll, _ = objective.exact_nll(params, outputs, batch, schema=model.schema, chunk=4)
  return sum(np.asarray(v)[:, pos] for v in nll.values())


def test_event_order_and_config_are_validated():
  cfg = ModelConfig(event_factorization="chain", event_order="device, ad_id")
  assert chain.event_order(TINY_SCHEMA, cfg) == ("device", "ad_id", "event_type")
  assert chain.earlier(TINY_SCHEMA, cfg) == {"device": (), "ad_id": ("device",), "event_type": ("device", "ad_id")}
  assert chain.event_order(TINY_SCHEMA, ModelConfig()) == ("ad_id", "event_type", "device")  # ids first
  assert set(chain.earlier(TINY_SCHEMA, ModelConfig()).values()) == {()}
  with pytest.raises(ValueError, match="not features of the schema"):
    chain.event_order(TINY_SCHEMA, ModelConfig(event_order="ad_id,campaign"))
  with pytest.raises(ValueError, match="named twice"):
    chain.event_order(TINY_SCHEMA, ModelConfig(event_order="ad_id,ad_id"))
  with pytest.raises(ValueError, match="event_factorization"):
    ModelConfig(event_factorization="joint")


@pytest.mark.parametrize("backbone", ["transformer", "lstm"])
def test_chain_nll_is_the_joint_by_brute_force_enumeration(backbone):
  """Every one of the 60 possible next events put in place, each scored by the model's exact per-feature NLLs:
  the probabilities sum to 1 (a proper joint: no factor sees its own value), and the observed event's NLL is
  the enumerated joint's. The factors depend on the earlier values (else this would be the factorized model)."""
  model, params = _model(backbone)
  base = _batch(TINY_SCHEMA, 1, 6)
  pos = 3  # position 3 predicts event 4
  combos = list(itertools.product(*[range(1, f.vocab_size) for f in TINY_SCHEMA]))
  batch = {k: np.repeat(v, len(combos), axis=0) for k, v in base.items()}
  for i, f in enumerate(TINY_SCHEMA):
    batch[f.name][:, pos + 1] = [c[i] for c in combos]
  log_p = -_event_nll(model, params, batch, pos)  # [60]
  assert abs(float(jax.scipy.special.logsumexp(log_p)) - 0.0) < 1e-5
  observed = combos.index(tuple(int(base[f.name][0, pos + 1]) for f in TINY_SCHEMA))
  assert_close(_event_nll(model, params, base, pos)[0], -log_p[observed])
  # The event-type factor given (device, ad) differs across devices: the chain conditions.
  outputs, _ = model.apply({"params": params}, batch)
  et = jax.nn.log_softmax(outputs["event_type"][:, pos], axis=-1)
  assert float(jnp.max(jnp.abs(et[0] - et[-1]))) > 1e-3


@pytest.mark.parametrize("backbone", ["transformer", "lstm"])
def test_a_feature_never_sees_its_own_or_later_values_of_the_same_event(backbone):
  """Feature j's outputs at position t are unchanged when the values of j and of the features after it in event
  t + 1 change, and change when an earlier feature's value does."""
  model, params = _model(backbone)
  order = chain.event_order(model.schema, model.cfg)
  batch = _batch(TINY_SCHEMA, 2, 8)
  pos = 4
  base, _ = model.apply({"params": params}, batch)
  for j, name in enumerate(order):
    changed = {k: v.copy() for k, v in batch.items()}
    for later in order[j:]:
      changed[later][:, pos + 1] = changed[later][:, pos + 1] % (TINY_SCHEMA[later].vocab_size - 1) + 1
    out, _ = model.apply({"params": params}, changed)
    np.testing.assert_array_equal(np.asarray(out[name])[:, :pos + 1], np.asarray(base[name])[:, :pos + 1])
    if j:
      changed = {k: v.copy() for k, v in batch.items()}
      first = order[0]
      changed[first][:, pos + 1] = changed[first][:, pos + 1] % (TINY_SCHEMA[first].vocab_size - 1) + 1
      out, _ = model.apply({"params": params}, changed)
      assert not np.allclose(np.asarray(out[name])[:, pos], np.asarray(base[name])[:, pos]), name
      np.testing.assert_array_equal(np.asarray(out[name])[:, :pos], np.asarray(base[name])[:, :pos])


def test_packed_users_do_not_see_each_other():
  """Two users in one row: user A's outputs do not move when user B's events change; A's last position reads
  no teacher-forced values from B's first event (there is no next event of A)."""
  model, params = _model()
  batch = _batch(TINY_SCHEMA, 1, 8)
  batch["segment_ids"][0] = [1, 1, 1, 1, 2, 2, 2, 2]
  batch["positions"][0] = [0, 1, 2, 3, 0, 1, 2, 3]
  changed = {k: v.copy() for k, v in batch.items()}
  for f in TINY_SCHEMA:
    changed[f.name][0, 4:] = changed[f.name][0, 4:] % (f.vocab_size - 1) + 1
  a, _ = model.apply({"params": params}, batch)
  b, _ = model.apply({"params": params}, changed)
  for name in a:
    np.testing.assert_array_equal(np.asarray(a[name])[0, :4], np.asarray(b[name])[0, :4], err_msg=name)


def _api_config(**overrides):
  return tiny_config(**{"model.event_factorization": "chain", "model.event_order": "device,event_type",
                        "model.max_len": 16, **overrides})


def test_score_given_is_the_factor_and_sample_draws_in_order():
  config = _api_config()
  schema = features.Schema.from_config(config.schema.features)
  params = api.init(jax.random.key(0), schema=schema, config=config)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 * jax.random.normal(jax.random.key(len(str(p))), x.shape) if p[-1].key == "bias" else x,
      params)
  rng = np.random.default_rng(0)
  lengths = [5, 9, 3]
  events = {f.name: [rng.integers(2, f.vocab_size, n).tolist() for n in lengths] for f in schema}
  batch = api.make_batch(schema, events, length=16)
  assert api.conditioning("ad_id", schema=schema, config=config) == ("device", "event_type")
  given = {"device": jnp.array([2, 3, 2]), "event_type": jnp.array([3, 3, 4])}
  cands = jnp.arange(schema["ad_id"].vocab_size)
  logp = api.score(params, batch, "ad_id", cands, given=given, schema=schema, config=config)  # [3, v]
  np.testing.assert_allclose(jax.scipy.special.logsumexp(logp[:, 1:], axis=-1), 0.0, atol=1e-5)  # normalized
  # The same factor, teacher-forced: put the given values (and any ad) in the next event and read apply().
  forced = {k: np.array(v) for k, v in batch.items()}
  rows, last = np.arange(3), np.array(lengths) - 1
  forced["segment_ids"][rows, last + 1] = 1  # event last + 1 exists (and causal: nothing before it changes)
  for name, ids in given.items():
    forced[name][rows, last + 1] = np.asarray(ids)
  full, _ = api.apply(params, forced, schema=schema, config=config)
  assert_close(logp[:, 1:], full["ad_id"][rows, last][:, 1:schema["ad_id"].vocab_size], scale_tol=1e-5)
  other = api.score(params, batch, "ad_id", cands, given={**given, "device": jnp.array([3, 2, 3])}, schema=schema,
                    config=config)
  assert float(jnp.max(jnp.abs(other - logp)[:, 1:])) > 1e-3  # the given values matter
  # What is not given is summed out exactly: p(ad | h, device) = Σ_e p(e | h, device) p(ad | h, device, e).
  part = api.score(params, batch, "ad_id", cands, given={"device": given["device"]}, schema=schema, config=config)
  types = jnp.arange(1, schema["event_type"].vocab_size)
  p_type = api.score(params, batch, "event_type", types, given={"device": given["device"]}, schema=schema,
                     config=config)  # [3, types]
  by_type = jnp.stack([api.score(params, batch, "ad_id", cands, given={"device": given["device"],
                                                                        "event_type": jnp.full((3,), e)},
                                 schema=schema, config=config) for e in np.asarray(types)], axis=1)  # [3, types, v]
  assert_close(part[:, 1:], jax.scipy.special.logsumexp(p_type[:, :, None] + by_type, axis=1)[:, 1:],
               scale_tol=1e-5)
  marginal = api.score(params, batch, "ad_id", cands, schema=schema, config=config)  # device and type summed out
  np.testing.assert_allclose(jax.scipy.special.logsumexp(marginal[:, 1:], axis=-1), 0.0, atol=1e-5)
  assert float(jnp.max(jnp.abs(marginal - part)[:, 1:])) > 1e-3
  with pytest.raises(ValueError, match=r"\['ad_id'\] cannot be summed out exactly \(sampled"):
    api.score(params, batch, "time_gap", jnp.arange(3), given=given, schema=schema, config=config)
  with pytest.raises(ValueError, match="come after it"):
    api.score(params, batch, "device", cands[:3], given={"ad_id": cands[:3]}, schema=schema, config=config)
  # Greedy sampling is the chain's greedy decoding: each feature the argmax given the values drawn before it.
  out = jax.jit(functools.partial(api.sample, num_events=1, schema=schema, config=config, top_k=1))(
      params, batch, jax.random.key(1))
  drawn = {f.name: np.asarray(out[f.name])[rows, last + 1] for f in schema}
  sofar = {}
  for name in chain.event_order(schema, ModelConfig.from_config(config.model)):
    v = schema[name].vocab_size
    lp = api.score(params, batch, name, jnp.arange(v), given=sofar, schema=schema, config=config)
    np.testing.assert_array_equal(drawn[name], np.argmax(np.asarray(lp)[:, 1:], axis=-1) + 1, err_msg=name)
    sofar[name] = jnp.asarray(drawn[name])


def test_chain_run_reports_the_joint(chain_run):
  """The default config trains the chain (conftest's chain_run, by the command line)."""
  saved = json.load(open(os.path.join(chain_run, "eval.json")))
  assert saved["event_factorization"] == "chain"
  gap = (saved["unigram_loss"] - saved["test_loss"]) / (saved["unigram_loss"] - saved["bayes_joint_loss"])
  assert abs(saved["gap_closed_joint"] - gap) < 1e-12
  assert saved["test_loss"] < saved["unigram_loss"], saved  # it learned (20 steps)


def test_export_takes_the_given_values(chain_run, tmp_path):
  """Default order: ad_id, then device, event_type, time_gap. The exported event_type score takes the next
  event's ad and device; without --given the exported ad_id score keeps its signature."""
  workdir = chain_run
  params, schema, config = api.load(workdir)
  assert api.conditioning("event_type", schema=schema, config=config) == ("ad_id", "device")
  rng = np.random.default_rng(1)
  events = {f.name: [rng.integers(2, f.vocab_size, n).tolist() for n in (4, 7)] for f in schema}
  given = {"ad_id": jnp.array([7, 30], jnp.int32), "device": jnp.array([2, 3], jnp.int32)}
  for feature, names, cands in (("event_type", ["ad_id", "device"], jnp.array([2, 3, 4], jnp.int32)),
                                ("ad_id", [], jnp.array([7, 2, 3, 100], jnp.int32))):
    out = str(tmp_path / f"{feature}.zip")
    proc = subprocess.run([sys.executable, "-m", "gpt_ads.cli.export", f"--workdir={workdir}", f"--out={out}",
                           f"--feature={feature}", f"--given={','.join(names)}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    art = api.read_export(out)
    assert art["meta"]["given"] == names
    batch = api.make_batch(schema, events, length=art["meta"]["length"])
    got = art["score"].call(cands, *[jnp.asarray(batch[k]) for k in art["meta"]["inputs"]],
                            *[given[g] for g in names])
    assert_close(got, api.score(params, batch, feature, cands, given={g: given[g] for g in names}, schema=schema,
                                config=config))
  bad = subprocess.run([sys.executable, "-m", "gpt_ads.cli.export", f"--workdir={workdir}", f"--out={out}x",
                        "--feature=ad_id", "--given=device"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=subprocess_env())
  assert bad.returncode == 2 and "come after it" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_downstream_runs_on_a_chain_run(chain_run):
  proc = subprocess.run([sys.executable, "-m", "gpt_ads.cli.downstream", f"--workdir={chain_run}", "--label=converted",
                         "--task=probe"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=subprocess_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.load(open(os.path.join(chain_run, "downstream", "converted_probe.json")))
  assert 0.0 <= result["auc"] <= 1.0

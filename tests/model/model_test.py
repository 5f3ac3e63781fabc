"""Model shapes, causality, segment isolation (packing), remat / dtype / combine variants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from gpt_ads import features
from gpt_ads.model import Model, ModelConfig, attention, chain
from gpt_ads.model.embed import padded_vocab
from gpt_ads.model.model import dummy_batch
from numerics import assert_close


def _model(**model_overrides):
  c = tiny_config(**{"model.event_factorization": "chain",  # the default's heads
                     **{f"model.{k}": v for k, v in model_overrides.items()}})
  schema = features.Schema.from_config(c.schema.features)
  return Model(schema, ModelConfig.from_config(c.model))


def _random_batch(schema, b, t, seed=0):
  rng = np.random.default_rng(seed)
  batch = {f.name: rng.integers(2, f.vocab_size, (b, t)).astype(np.int32) for f in schema}
  batch["segment_ids"] = np.ones((b, t), np.int32)
  batch["positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  return batch


@pytest.fixture(scope="module")
def model_and_params():
  model = _model()
  params = model.init(jax.random.key(0), dummy_batch(model.schema, 1, model.cfg.max_len))["params"]
  return model, nn.unbox(params)


def test_output_shapes(model_and_params):
  model, params = model_and_params
  batch = _random_batch(model.schema, 3, 16)
  outputs, hidden = model.apply({"params": params}, batch)
  assert hidden.shape == (3, 16, model.cfg.d_model)
  for f in model.schema:
    if f.sampled:
      assert outputs[f.name].shape == (3, 16, f.embed_dim)
    else:
      assert outputs[f.name].shape == (3, 16, padded_vocab(f.vocab_size, model.cfg.vocab_pad_multiple))
      probs = jax.nn.softmax(outputs[f.name], axis=-1)
      assert float(probs[..., features.PAD_ID].max()) == 0.0  # PAD is never predicted
      assert float(probs[..., f.vocab_size:].max()) == 0.0  # nor table padding


def test_causal(model_and_params):
  model, params = model_and_params
  batch = _random_batch(model.schema, 2, 16)
  changed = {k: v.copy() for k, v in batch.items()}
  changed["ad_id"][:, 10:] = 5
  a, _ = model.apply({"params": params}, batch)
  b, _ = model.apply({"params": params}, changed)
  reads_next_ad = {n for n, names in chain.earlier(model.schema, model.cfg).items() if "ad_id" in names}
  for name in a:  # every output, the copy term's gates and ids too
    seen = 9 if name.split("/")[0] in reads_next_ad else 10  # chain heads at 9 read event 10's earlier values
    assert_close(a[name][:, :seen], b[name][:, :seen], err_msg=name)
  for name in model.schema.names:
    assert not np.allclose(a[name][:, 10:], b[name][:, 10:])


def test_packed_users_do_not_see_each_other(model_and_params):
  """Two users packed in one row give exactly the outputs each gets alone."""
  model, params = model_and_params
  u1, u2 = _random_batch(model.schema, 1, 6, seed=1), _random_batch(model.schema, 1, 7, seed=2)
  packed = {k: np.concatenate([u1[k], u2[k]], axis=1) for k in u1}
  packed["segment_ids"] = np.array([[1] * 6 + [2] * 7], np.int32)
  out_p, _ = model.apply({"params": params}, packed)
  out_1, _ = model.apply({"params": params}, u1)
  out_2, _ = model.apply({"params": params}, u2)
  for name in out_p:
    assert_close(out_p[name][:, :6], out_1[name], err_msg=name)
    assert_close(out_p[name][:, 6:], out_2[name], err_msg=name)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_does_not_change_outputs_or_grads(model_and_params, remat):
  model, params = model_and_params
  other = Model(model.schema, ModelConfig(**{**model.cfg.__dict__, "remat": remat}))
  batch = _random_batch(model.schema, 2, 16)

  def loss(m, p):
    out, h = m.apply({"params": p}, batch)
    return jnp.sum(h ** 2) + sum(jnp.sum(jnp.where(o > -1e8, o, 0.0)) for o in out.values())

  assert_close(loss(model, params), loss(other, params))
  g1, g2 = jax.grad(lambda p: loss(model, p))(params), jax.grad(lambda p: loss(other, p))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    assert_close(a, b)


def test_bfloat16_compute_is_the_float32_model_to_bf16_precision(model_and_params):
  """The same params computed in bf16 (f32 accumulation): hidden states and every head's outputs within 4 bf16
  ulps (eps 7.8e-3) of the f32 model's scale (measured <= 9.6e-3 of it), and not bitwise equal (the bf16 path
  is the one taken)."""
  model, params = model_and_params
  bf16 = Model(model.schema, ModelConfig(**{**model.cfg.__dict__, "dtype": "bfloat16"}))
  batch = _random_batch(model.schema, 2, 16)
  (a, ha), (b, hb) = model.apply({"params": params}, batch), bf16.apply({"params": params}, batch)
  bf16_eps = float(jnp.finfo(jnp.bfloat16).eps)
  assert_close(hb, ha, rtol=4 * bf16_eps, scale_tol=4 * bf16_eps)
  for name in model.schema.names:
    assert_close(b[name], a[name], rtol=4 * bf16_eps, scale_tol=4 * bf16_eps, err_msg=name)
  assert not np.array_equal(np.asarray(hb), np.asarray(ha))


def test_bfloat16_head_leaves_the_float32_body_and_rounds_only_the_exact_heads(model_and_params):
  """head_dtype='bfloat16': the body's hidden states are the f32 model's bit for bit, the exact heads' matmul
  runs in bf16 (LinearLogits in bf16, logits within 4 bf16 ulps of the f32 scale), the sampled heads unchanged."""
  model, params = model_and_params
  bf16 = Model(model.schema, ModelConfig(**{**model.cfg.__dict__, "head_dtype": "bfloat16"}))
  batch = _random_batch(model.schema, 2, 16)
  (a, ha), (b, hb) = model.apply({"params": params}, batch), bf16.apply({"params": params}, batch)
  np.testing.assert_array_equal(np.asarray(hb), np.asarray(ha))
  bf16_eps = float(jnp.finfo(jnp.bfloat16).eps)
  factors, _ = bf16.apply({"params": params}, batch, logits=False)
  for f in model.schema:
    if f.sampled:
      np.testing.assert_array_equal(np.asarray(b[f.name]), np.asarray(a[f.name]), err_msg=f.name)
      continue
    assert factors[f.name].inputs.dtype == jnp.bfloat16 and b[f.name].dtype == jnp.float32, f.name
    assert_close(b[f.name], a[f.name], rtol=4 * bf16_eps, scale_tol=4 * bf16_eps, err_msg=f.name)
    assert not np.array_equal(np.asarray(b[f.name]), np.asarray(a[f.name])), f.name


def test_scan_unroll_keeps_the_params_and_the_outputs(model_and_params):
  """scan_unroll is not a shape key: a fully unrolled scan (0) takes the rolled loop's (1) stacked params as they
  are and gives its outputs and gradients."""
  model, params = model_and_params
  assert model.cfg.scan_layers and model.cfg.num_layers > 1
  batch = _random_batch(model.schema, 2, 16)
  runs = {}
  for unroll in (1, 0):
    m = Model(model.schema, ModelConfig(**{**model.cfg.__dict__, "scan_unroll": unroll}))
    fresh = m.init(jax.random.key(0), dummy_batch(m.schema, 1, m.cfg.max_len))["params"]
    assert jax.tree.map(jnp.shape, nn.unbox(fresh)) == jax.tree.map(jnp.shape, params)

    def loss(p, m=m):
      out, h = m.apply({"params": p}, batch)
      return jnp.sum(h ** 2) + sum(jnp.sum(jnp.where(o > -1e8, o, 0.0)) for o in out.values())
    runs[unroll] = jax.value_and_grad(loss)(params)
  assert_close(runs[0][0], runs[1][0])
  for a, b in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1])):
    assert_close(a, b)


@pytest.mark.parametrize("overrides", [dict(dtype="bfloat16"), dict(combine="concat"), dict(scan_layers=False),
                                       dict(dropout=0.1)])
def test_variants_run(overrides):
  model = _model(**overrides)
  params = model.init(jax.random.key(0), dummy_batch(model.schema, 1, model.cfg.max_len))["params"]
  out, hidden = model.apply({"params": params},
                            _random_batch(model.schema, 2, 16), deterministic=False,
                            rngs={"dropout": jax.random.key(1)})
  assert hidden.dtype == jnp.float32 and bool(jnp.isfinite(hidden).all())
  assert all(bool(jnp.isfinite(jnp.where(o > -1e8, o, 0)).all()) for o in out.values())


def test_bad_model_config_is_rejected():
  with pytest.raises(ValueError, match="divisible by num_heads"):
    ModelConfig(d_model=30, num_heads=4)
  with pytest.raises(ValueError, match="head_dtype"):
    ModelConfig(head_dtype="float16")
  with pytest.raises(ValueError, match="scan_unroll"):
    ModelConfig(scan_unroll=-1)
  with pytest.raises(ValueError, match="remat"):
    ModelConfig(remat="sometimes")
  with pytest.raises(ValueError, match="attention"):
    ModelConfig(attention="flash")
  with pytest.raises(ValueError, match="needs dtype='bfloat16'"):
    ModelConfig(attention="cudnn")  # float32
  with pytest.raises(ValueError, match="multiple of 8"):
    ModelConfig(attention="cudnn", dtype="bfloat16", d_model=36, num_heads=3)


def test_causal_by_the_kernel_with_a_segment_mask_is_the_full_mask():
  """What attention='cudnn' computes: causality from the kernel (is_causal) and packing from the same-segment
  mask alone. Run through the XLA implementation (no GPU here), it equals the full mask at every real position,
  on rows of several users with padding at the end."""
  rng = np.random.default_rng(0)
  b, t, h, k = 3, 12, 2, 8
  q, key, v = (jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32) for _ in range(3))
  segments = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12, [1, 1, 2, 3, 3, 3, 3, 4, 0, 0, 0, 0]], jnp.int32)
  full = attention.attend(q, key, v, attention.attention_mask(segments), "xla")
  by_kernel = jax.nn.dot_product_attention(q, key, v, mask=attention.attention_mask(segments, causal=False),
                                           is_causal=True, implementation="xla")
  real = np.asarray(segments) > 0
  assert_close(np.asarray(by_kernel)[real], np.asarray(full)[real])
  assert bool(jnp.isfinite(by_kernel).all())  # padding rows keep a key (their diagonal): no NaN
  # and the segment mask matters: without it the packed users would see each other
  leaky = jax.nn.dot_product_attention(q, key, v, is_causal=True, implementation="xla")
  assert not np.allclose(np.asarray(leaky)[real], np.asarray(full)[real], atol=1e-3)


def test_copy_term_outputs():
  c = tiny_config(**{"schema.features.ad_id.copy_lags": 2, "model.event_factorization": "chain"})
  model = Model(features.Schema.from_config(c.schema.features), ModelConfig.from_config(c.model))
  params = model.init(jax.random.key(0), dummy_batch(model.schema, 1, model.cfg.max_len))["params"]
  batch = _random_batch(model.schema, 2, 8)
  outputs, _ = model.apply({"params": nn.unbox(params)}, batch)
  gates, ids = outputs["ad_id/copy_gates"], outputs["ad_id/copy_ids"]
  assert gates.shape == ids.shape == (2, 8, 2)
  assert float(jnp.abs(gates).max()) == 0.0  # starts neutral: zero kernel and bias
  np.testing.assert_array_equal(ids[:, 1:, 1], batch["ad_id"][:, :-1])
  # Heads applied at one position per row (what scoring the next event uses) = every output taken there.
  at = np.array([3, 7])
  params = nn.unbox(params).copy()
  params["heads"]["ad_id"]["copy"]["kernel"] = jax.random.normal(jax.random.key(1), (model.cfg.d_model, 2))
  outputs, _ = model.apply({"params": params}, batch)
  # Under the chain factorization the heads at `at` are given what the full pass teacher-forces there: the next
  # event's values (none after a row's last position).
  nxt = {n: np.where(at + 1 < 8, batch[n][np.arange(2), np.minimum(at + 1, 7)], features.PAD_ID)
         for n in model.schema.names}
  last, _ = model.apply({"params": params}, batch, at=jnp.asarray(at), given=nxt)
  assert set(last) == set(outputs)
  for k in outputs:
    assert last[k].shape == (2, 1) + outputs[k].shape[2:], k
    assert_close(last[k][:, 0], outputs[k][np.arange(2), at], err_msg=k)
  with pytest.raises(ValueError, match="copy_lags"):
    features.Schema((features.FeatureSpec(name="event_type", vocab_size=8, copy_lags=1),))

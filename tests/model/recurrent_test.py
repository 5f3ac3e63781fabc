"""The LSTM backbone (`config.model.backbone="lstm"`): shapes, causality, packing resets, it learns."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from gpt_ads import features
from gpt_ads.model import Model, ModelConfig, chain
from gpt_ads.model.model import dummy_batch
from gpt_ads.model.recurrent import segment_starts
from numerics import assert_close


def _model(**model_overrides):
  c = tiny_config(**{"model.backbone": "lstm", "model.event_factorization": "chain",
                     **{f"model.{k}": v for k, v in model_overrides.items()}})
  schema = features.Schema.from_config(c.schema.features)
  return Model(schema, ModelConfig.from_config(c.model))


def _random_batch(schema, b, t, seed=0):
  rng = np.random.default_rng(seed)
  batch = {f.name: rng.integers(2, f.vocab_size, (b, t)).astype(np.int32) for f in schema}
  batch["segment_ids"] = np.ones((b, t), np.int32)
  batch["positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  return batch


def _init(model):
  return nn.unbox(model.init(jax.random.key(0), dummy_batch(model.schema, 1, model.cfg.max_len))["params"])


@pytest.fixture(scope="module")
def model_and_params():
  model = _model()
  return model, _init(model)


def test_backbone_is_validated():
  assert ModelConfig().backbone == "transformer"
  with pytest.raises(ValueError, match="backbone"):
    ModelConfig(backbone="rnn")


def test_segment_starts():
  seg = jnp.array([[1, 1, 2, 2, 2, 0, 0]])
  np.testing.assert_array_equal(segment_starts(seg), [[1, 0, 1, 0, 0, 1, 0]])


def test_output_shapes_match_transformer(model_and_params):
  model, params = model_and_params
  transformer = Model(model.schema, ModelConfig(**{**model.cfg.__dict__, "backbone": "transformer"}))
  t_params = _init(transformer)
  batch = _random_batch(model.schema, 3, 16)
  out, hidden = model.apply({"params": params}, batch)
  t_out, t_hidden = transformer.apply({"params": t_params}, batch)
  assert hidden.shape == t_hidden.shape == (3, 16, model.cfg.d_model) and hidden.dtype == jnp.float32
  assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in t_out.items()}
  assert set(params) == set(t_params) and "decoder" in params
  # Gate kernels carry logical axes.
  boxed = model.init(jax.random.key(0), dummy_batch(model.schema, 1, model.cfg.max_len))["params"]
  lstm = boxed["decoder"]["layers"]["lstm"]
  assert lstm["wh"].names == ("layers", "embed", "mlp") and lstm["wi"]["kernel"].names == ("layers", "embed", "mlp")


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
  """Two users packed in one row give exactly the outputs each gets alone (the state resets at each user)."""
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


@pytest.mark.parametrize("overrides", [dict(dtype="bfloat16"), dict(scan_layers=False, remat="full"),
                                       dict(dropout=0.1)])
def test_variants_run(overrides):
  model = _model(**overrides)
  out, hidden = model.apply({"params": _init(model)}, _random_batch(model.schema, 2, 16), deterministic=False,
                            rngs={"dropout": jax.random.key(1)})
  assert hidden.dtype == jnp.float32 and bool(jnp.isfinite(hidden).all())
  assert all(bool(jnp.isfinite(jnp.where(o > -1e8, o, 0)).all()) for o in out.values())


def test_lstm_trains(tmp_path):
  """40 steps through the trainer: the training loss falls and the test loss beats the unigram baseline."""
  from gpt_ads.training import train
  result = train.train_and_evaluate(tiny_config(**{
      "model.backbone": "lstm", "train.num_steps": 40, "train.eval_every": 0, "train.checkpoint_every": 1000,
      "train.learning_rate": 3e-3, "train.log_every": 10}), str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert records[-1]["train/loss"] < records[0]["train/loss"] - 0.5, [r["train/loss"] for r in records]
  assert result["test_loss"] < result["unigram_loss"], result
  assert result["test_loss"] < result["unigram_loss"]

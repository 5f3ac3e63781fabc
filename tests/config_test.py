"""Every preset loads and builds; presets span >= 100x in non-embedding parameters."""

import pytest

from configs import default as default_config
from gpt_ads import config_lib, features
from gpt_ads.model import Model, ModelConfig
from gpt_ads.training import accounting


@pytest.mark.parametrize("arg", [None, "long", *config_lib.MODEL_SIZES, "size=large,run=long"])
def test_preset_loads_and_builds(arg):
  c = default_config.get_config(arg)
  schema = features.Schema.from_config(c.schema.features)
  model = Model(schema, ModelConfig.from_config(c.model))
  counts = accounting.param_counts(accounting.abstract_params(model), schema)
  assert 0 < counts["non_embedding_params"] < counts["params"]


def test_presets_span_two_orders_of_magnitude():
  """The presets' sizes are the study's classes under its objective (independent heads; the chain's inputs
  add 3 d x d MLPs and projections on the default schema)."""
  n = {}
  for size in config_lib.MODEL_SIZES:
    c = default_config.get_config(size)
    c.model.event_factorization = "independent"
    schema = features.Schema.from_config(c.schema.features)
    n[size] = accounting.param_counts(accounting.abstract_params(Model(schema, ModelConfig.from_config(c.model))),
                                      schema)["non_embedding_params"]
  print("non-embedding params per preset:", n)
  assert n["nano"] <= 20_000 and n["large"] >= 10_000_000  # the CPU range
  assert n["large"] / n["nano"] >= 100
  assert 80e6 <= n["xl"] <= 90e6 and 195e6 <= n["xxl"] <= 210e6  # the study's 85M / 201M classes
  assert list(n.values()) == sorted(n.values())


def test_overrides_follow_references():
  c = default_config.get_config("small")
  c.model.d_model = 96
  c.data.synthetic.num_ads = 123
  schema = features.Schema.from_config(c.schema.features)
  assert schema["ad_id"].embed_dim == 96 and schema["ad_id"].vocab_size == 123 + features.NUM_RESERVED


@pytest.mark.parametrize("arg, msg", [("size=huge", "size='huge'"), ("bogus=1", "unknown key 'bogus'"),
                                      ("run=forever", "run='forever'")])
def test_bad_arguments_name_the_problem(arg, msg):
  with pytest.raises(ValueError, match=msg):
    default_config.get_config(arg)


def test_bad_schema_is_rejected():
  c = default_config.get_config()
  c.schema.features.ad_id.loss = "hierarchical"
  with pytest.raises(ValueError, match="ad_id.*loss='hierarchical'"):
    features.Schema.from_config(c.schema.features)

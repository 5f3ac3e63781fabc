"""The gpt_ads model: schema-driven embeddings -> causal decoder -> per-feature heads."""

from gpt_ads.model.config import ModelConfig
from gpt_ads.model.model import Model, from_config, init_params

__all__ = ["Model", "ModelConfig", "from_config", "init_params"]

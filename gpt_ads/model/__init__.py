"""The gpt_ads model: schema-driven embeddings -> causal decoder -> per-feature heads."""

from gpt_ads.model.config import ModelConfig
from gpt_ads.model.model import Model

__all__ = ["Model", "ModelConfig"]

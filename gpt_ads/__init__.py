"""gpt_ads: generative pre-training on user ad-activity sequences (JAX / Flax)."""

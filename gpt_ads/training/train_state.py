"""TrainState and its creation directly in sharded form (never built on one device and then moved).

    abstract_boxed = jax.eval_shape(init_boxed, rng)        # shapes + logical axis names, no memory
    shardings      = logical -> mesh via config rules
    state          = jax.jit(init, out_shardings=shardings)(rng)
The same shardings (as ShapeDtypeStructs) are the restore target of checkpoints.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
import optax

from gpt_ads.model import init_params
from gpt_ads.model.embed import padded_vocab
from gpt_ads.training import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _init_boxed(rng: jax.Array, *, model, tx: optax.GradientTransformation) -> TrainState:
  """TrainState whose params and optimizer moments are still boxed (for their logical partition specs)."""
  params = init_params(model, rng)
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params))


def abstract_and_shardings(model, tx, mesh, rule_set) -> tuple[TrainState, TrainState]:
  """-> (abstract unboxed state [ShapeDtypeStruct leaves carrying their shardings], state shardings)."""
  boxed = jax.eval_shape(functools.partial(_init_boxed, model=model, tx=tx), jax.random.key(0))
  shardings = sharding.tree_shardings(mesh, boxed, rule_set)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed),
                          shardings)
  return abstract, shardings


def log_prior_biases(schema, counts: dict[str, np.ndarray], pad_multiple: int) -> dict[str, np.ndarray]:
  """{feature: [v_padded] f32 log training frequency (add-0.5)} — output biases that start at the unigram model.

  Starting every head at the unigram distribution spares the model learning a bias per id from sparse
  gradients (most ids of a large vocabulary are rare); PAD and table padding are masked anyway.
  """
  out = {}
  for f in schema:
    if f.name not in counts:
      continue
    c = np.zeros(padded_vocab(f.vocab_size, pad_multiple), np.float64)
    n = min(len(counts[f.name]), f.vocab_size)
    c[:n] = counts[f.name][:n]
    c[1:f.vocab_size] += 0.5
    c[0] = 0.0
    bias = np.zeros_like(c)
    bias[1:f.vocab_size] = np.log(c[1:f.vocab_size] / c.sum())
    out[f.name] = bias.astype(np.float32)
  return out


def create(rng: jax.Array, model, tx, shardings, output_biases: dict[str, np.ndarray] | None = None) -> TrainState:
  """A fresh state, each array created directly with its sharding; `output_biases` replace head biases."""

  def init(r, biases):
    params = nn.unbox(init_params(model, r))
    for name, b in biases.items():
      params["heads"][name]["bias"] = b
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params))

  return jax.jit(init, out_shardings=shardings)(rng, output_biases or {})

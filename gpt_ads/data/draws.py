"""Random-draw primitives of the synthetic process (gpt_ads.data.synthetic, gpt_ads.data.bot_kinds)."""

from __future__ import annotations

import numpy as np

FLOOR = 1e-12  # keeps every Dirichlet draw strictly positive, so no observed event has zero likelihood


class Categorical:
  """Vectorized draws from the rows of a probability table [R, V] (one searchsorted over offset CDFs)."""

  def __init__(self, probs: np.ndarray):
    probs = np.asarray(probs, np.float64).reshape(-1, probs.shape[-1])  # [R, V]
    cdf = np.cumsum(probs, axis=-1)
    cdf /= cdf[:, -1:]
    self.num_values = probs.shape[1]
    self.flat = (cdf + np.arange(len(cdf))[:, None]).ravel()  # [R * V], monotone

  def draw(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """One value per entry of `rows` (row indices [n]) -> int64 [n] in [0, V)."""
    u = rows + rng.random(len(rows))
    idx = np.searchsorted(self.flat, u, side="right") - rows * self.num_values
    return np.clip(idx, 0, self.num_values - 1)


def dirichlet(rng: np.random.Generator, alpha: float, dim: int, size: tuple[int, ...] = ()) -> np.ndarray:
  """Dirichlet(alpha * 1_dim) draws [*size, dim], floored at FLOOR and renormalized."""
  p = rng.dirichlet(np.full(dim, alpha), size=size) if size else rng.dirichlet(np.full(dim, alpha))
  p = np.maximum(p, FLOOR)
  return p / p.sum(-1, keepdims=True)

"""Comparing floating-point results with tolerances that follow the size of what is compared.

Rounding in a float32 sum, matmul or softmax is relative to the magnitudes that went in, not to the result: an
entry that comes out small by cancellation (a gradient summed over many positions, a first moment of such a
gradient) carries the absolute error of its large neighbours. XLA's CPU backend also picks its kernels by the
host's instruction set (AVX2, AVX-512, AMX), which changes the order of those sums, so results move in their
last bits from host to host. A fixed `atol` (1e-9, say) encodes one host's rounding of one array; here the
absolute tolerance is a multiple of the array's scale, max |expected| over its finite entries, beside `rtol`.
Entries at the heads' mask value (NEG_INF = -1e9 on invalid ids) are a mask, not a magnitude: they are left out
of the scale (`rtol` still compares them).

    assert_close(got, want)                      # rtol 1e-5, atol 1e-6 * max|want|
    assert_close(got, want, scale_tol=1e-4)      # with a comment saying why the looser bound is the right one
"""

import numpy as np

from gpt_ads.model.heads import NEG_INF

F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7: one unit in the last place of a float32 near 1


def scale_of(x) -> float:
  """max |x| over the finite, unmasked entries of x (0.0 when there are none)."""
  x = np.abs(np.asarray(x, np.float64))
  x = x[np.isfinite(x) & (x < 0.1 * abs(NEG_INF))]
  return float(x.max()) if x.size else 0.0


def assert_close(actual, expected, *, rtol: float = 1e-5, scale_tol: float = 1e-6, scale: float | None = None,
                 err_msg: str = "") -> None:
  """np.testing.assert_allclose(actual, expected, rtol, atol = scale_tol * scale), with `scale` the largest
  finite |expected| unless given (pass it when the numbers compared came from larger ones, e.g. an update
  lr * m / sqrt(v) whose error follows lr, not the parameter). Infinities must match exactly."""
  expected = np.asarray(expected, np.float64)
  s = scale_of(expected) if scale is None else float(scale)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=scale_tol * s,
                             err_msg=err_msg)

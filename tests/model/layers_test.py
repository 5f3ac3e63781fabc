"""layers.einsum: the mixed-precision contraction and its hand-written VJP (bf16 operands in both directions)."""

import jax
import jax.numpy as jnp
from jax import ad_checkpoint
import numpy as np
import pytest

from gpt_ads.model import layers
from gpt_ads.model.config import REMAT_POLICIES
from numerics import assert_close

# The model's contractions (attention projections, MLP, heads) and one with a batch index on both sides.
EQUATIONS = [("btd,df->btf", (2, 5, 8), (8, 12)), ("btd,dhk->bthk", (2, 5, 8), (8, 2, 4)),
             ("bthk,hkd->btd", (2, 5, 2, 4), (2, 4, 8)), ("bkd,bkv->dv", (2, 5, 8), (2, 5, 6))]


@pytest.mark.parametrize("eq,x_shape,w_shape", EQUATIONS)
def test_bf16_einsum_gradients_are_the_f32_ones_to_bf16_precision(eq, x_shape, w_shape):
  """Gradients of a bf16 einsum (the custom VJP's transposed equations) against exact f32 autodiff: within a few
  bf16 ulps of the gradient's scale, in the operands' own dtypes (an f32 kernel gets an f32 gradient)."""
  kx, kw, kc = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  ct = jax.random.normal(kc, jnp.einsum(eq, x, w).shape)

  def loss(dtype):
    return lambda x, w: jnp.sum(layers.einsum(eq, x, w, dtype).astype(jnp.float32) * ct)

  g16, g32 = jax.grad(loss(jnp.bfloat16), (0, 1))(x, w), jax.grad(loss(jnp.float32), (0, 1))(x, w)
  eps = float(jnp.finfo(jnp.bfloat16).eps)
  for a, b in zip(g16, g32):
    assert a.dtype == jnp.float32
    assert_close(a, b, rtol=8 * eps, scale_tol=8 * eps)
  assert not np.array_equal(np.asarray(g16[0]), np.asarray(g32[0]))  # the bf16 path is the one taken
  # bf16 operands keep their dtype through the VJP
  gx = jax.grad(lambda x: jnp.sum(layers.einsum(eq, x, w, jnp.bfloat16).astype(jnp.float32)))(x.astype(jnp.bfloat16))
  assert gx.dtype == jnp.bfloat16


def test_einsum_whose_gradient_is_not_an_einsum_is_refused():
  x, w = jnp.ones((3, 4)), jnp.ones((4,))
  with pytest.raises(ValueError, match="index 'i'"):
    jax.grad(lambda x: jnp.sum(layers.einsum("ij,j->j", x, w, jnp.bfloat16).astype(jnp.float32)))(x)


def test_bf16_bias_gradient_is_the_sum_of_the_cotangent():
  """add_bias's matrix-vector gradient: the cotangent summed over every leading dim, in the bias's dtype."""
  g = jax.random.normal(jax.random.key(0), (3, 5, 2, 4)).astype(jnp.bfloat16)
  y, bias = jnp.zeros((3, 5, 2, 4), jnp.bfloat16), jnp.ones((2, 4), jnp.float32)
  _, vjp = jax.vjp(layers.add_bias, y, bias)
  d_y, d_bias = vjp(g)
  assert d_y.dtype == jnp.bfloat16 and d_bias.dtype == jnp.float32 and d_bias.shape == (2, 4)
  np.testing.assert_array_equal(np.asarray(d_y), np.asarray(g))
  want = np.asarray(g, np.float64).sum(axis=(0, 1))
  np.testing.assert_allclose(np.asarray(d_bias), want, rtol=1e-5, atol=1e-5)


def test_save_dots_policy_keeps_the_bf16_einsum_outputs(capsys):
  """The custom VJP hides its dot from jax's dots policy; "save_dots" still keeps its output (by checkpoint name)
  and "full" keeps nothing but the arguments."""
  x, w1, w2 = jnp.ones((4, 8)), jnp.ones((8, 16)), jnp.ones((16, 8))

  def f(x, w1, w2):
    h = jnp.tanh(layers.einsum("td,df->tf", x, w1, jnp.bfloat16))
    return jnp.sum(layers.einsum("tf,fd->td", h, w2, jnp.bfloat16).astype(jnp.float32))

  def saved(policy):
    ad_checkpoint.print_saved_residuals(jax.checkpoint(f, policy=REMAT_POLICIES[policy]), x, w1, w2)
    return capsys.readouterr().out
  assert "bf16[4,16]" in saved("save_dots")
  assert "bf16[4,16]" not in saved("full")

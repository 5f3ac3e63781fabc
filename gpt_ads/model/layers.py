"""Basic layers: an einsum Dense with logical axes and mixed precision, and RMSNorm.

Mixed precision: parameters are stored in `param_dtype` (f32); inputs and kernels are cast to `dtype` (e.g. bf16)
and every contraction accumulates in f32 (`preferred_element_type`), the fast path on CPUs with AMX and on GPUs.
The backward contractions take the cotangent in `dtype` too (`einsum`'s VJP): autodiff of a bf16 x bf16 -> f32
dot would contract the f32 cotangent with the bf16 operand, which XLA upcasts to an f32 matmul.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gpt_ads.model import axes

Dtype = Any
# The checkpoint name of a low-precision einsum's output: the "save_dots" remat policy saves it by this name, since
# the custom VJP hides the dot inside from jax's dots policies (gpt_ads.model.config.REMAT_POLICIES).
DOT_NAME = "low_precision_dot"


def einsum(eq: str, x: jax.Array, w: jax.Array, dtype: Dtype, out_dtype: Dtype | None = None) -> jax.Array:
  """`jnp.einsum` with inputs cast to `dtype`, f32 accumulation, result in `out_dtype` (default `dtype`; float32
  keeps the accumulator, e.g. logits). Below f32 the gradient's two contractions also run on `dtype` operands
  with f32 accumulation (`_low_precision_einsum`); the gradients come back in x's and w's own dtypes (an f32
  kernel's gradient is never rounded to `dtype`)."""
  out_dtype = jnp.dtype(dtype if out_dtype is None else out_dtype)
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32).astype(out_dtype)
  _operands(eq)  # an equation the VJP cannot transpose fails here, forward or not
  return checkpoint_name(_low_precision_einsum(eq, jnp.dtype(dtype), out_dtype, x, w), DOT_NAME)


def _operands(eq: str) -> tuple[str, str, str]:
  """"btd,df->btf" -> ("btd", "df", "btf"); refuses an equation whose gradient is not an einsum of the other two
  (every index must appear in exactly two of the three terms)."""
  ins, out = eq.replace(" ", "").split("->")
  a, b = ins.split(",")
  for i in sorted(set(a + b + out)):
    if (i in a) + (i in b) + (i in out) != 2 or max(a.count(i), b.count(i), out.count(i)) > 1:
      raise ValueError(f"einsum {eq!r}: index {i!r} must appear once in exactly two of the three terms")
  return a, b, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _low_precision_einsum(eq: str, dtype, out_dtype, x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32).astype(out_dtype)


def _low_precision_einsum_fwd(eq, dtype, out_dtype, x, w):
  return _low_precision_einsum(eq, dtype, out_dtype, x, w), (x, w)


def _low_precision_einsum_bwd(eq, dtype, out_dtype, residuals, g):
  del out_dtype
  x, w = residuals
  a, b, out = _operands(eq)
  x_, w_, g_ = x.astype(dtype), w.astype(dtype), g.astype(dtype)
  d_x = jnp.einsum(f"{out},{b}->{a}", g_, w_, preferred_element_type=jnp.float32)
  d_w = jnp.einsum(f"{a},{out}->{b}", x_, g_, preferred_element_type=jnp.float32)
  return d_x.astype(x.dtype), d_w.astype(w.dtype)


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias (bias over y's trailing dims, cast to y's dtype), for a low-precision y. Its gradient sums the
  cotangent over the leading dims as a matrix-vector product (ones . g, f32 accumulation) instead of the
  convert + reduce-window XLA:CPU makes of autodiff's bf16 sum (~5 ns an element: a small bf16 step 233 -> 219 ms,
  min of 4 alternated rounds). For f32 the plain sum measured faster and stays (Dense)."""
  return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
  return add_bias(y, bias), bias  # a parameter, alive anyway: only its shape and dtype are read


def _add_bias_bwd(bias, g):
  rows = g.reshape(-1, bias.size)  # [n, bias size]
  d_bias = jnp.einsum("n,nf->f", jnp.ones(rows.shape[:1], g.dtype), rows, preferred_element_type=jnp.float32)
  return g, d_bias.reshape(bias.shape).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Dense(nn.Module):
  """`y = einsum(eq, x, kernel) (+ bias)`; the kernel carries logical axis names.

  Attributes:
    eq: the einsum, e.g. "btd,df->btf".
    shape: kernel shape.
    axes: logical axis names of the kernel, one per dimension.
    use_bias: add a bias over the output dimensions (the kernel's trailing `len(bias_axes)` dims).
    bias_axes: logical names of the bias (the output dims).
    dtype: compute dtype; param_dtype: storage dtype.
  """
  eq: str
  shape: Sequence[int]
  axes: Sequence[str | None]
  use_bias: bool = False
  bias_axes: Sequence[str | None] = ()
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.axes)),
                        tuple(self.shape), self.param_dtype)
    y = einsum(self.eq, x, kernel, self.dtype)
    if self.use_bias:
      bias_shape = tuple(self.shape[len(self.shape) - len(self.bias_axes):])
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes)),
                        bias_shape, self.param_dtype)
      y = y + bias if y.dtype == jnp.float32 else add_bias(y, bias)
    return y


class RMSNorm(nn.Module):
  """Root-mean-square layer norm, computed in f32, with a learned scale over the last axis.

  Attributes:
    eps: added to the mean square.
    dtype: output dtype; param_dtype: storage dtype of the scale.
  """
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (axes.P_EMBED,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)

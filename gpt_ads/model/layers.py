"""Basic layers: an einsum Dense with logical axes and mixed precision, and RMSNorm.

Mixed precision: parameters are stored in `param_dtype` (f32); inputs and kernels are cast to `dtype` (e.g. bf16)
and every contraction accumulates in f32 (`preferred_element_type`), the fast path on CPUs with AMX and on GPUs.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_ads.model import axes

Dtype = Any


def einsum(eq: str, x: jax.Array, w: jax.Array, dtype: Dtype) -> jax.Array:
  """`jnp.einsum` with inputs cast to `dtype`, f32 accumulation, result in `dtype`."""
  out = jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
  return out.astype(dtype)


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
      y = y + bias.astype(self.dtype)
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

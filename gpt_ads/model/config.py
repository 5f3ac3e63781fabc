"""ModelConfig: the static (hashable) hyper-parameters every model module reads, and the remat policies."""

import dataclasses

import jax
import jax.numpy as jnp

from gpt_ads.model.layers import DOT_NAME

# Remat policies selectable by name in `config.model.remat`. A low-precision `layers.einsum` is a custom VJP,
# opaque to the dots policy, so its output is saved by its checkpoint name.
REMAT_POLICIES = {
    "none": None,  # no rematerialization: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.save_from_both_policies(  # keep matmul outputs only
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(DOT_NAME)),
}

# Sequence backbones selectable in `config.model.backbone` (see gpt_ads.model.model).
BACKBONES = ("transformer", "lstm")

# Attention implementations selectable in `config.model.attention` (gpt_ads.model.attention.attend).
ATTENTION = ("xla", "cudnn")

# How an event's features are predicted, in `config.model.event_factorization` (see gpt_ads.model.chain).
FACTORIZATIONS = ("independent", "chain")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyper-parameters (hashable), built from `config.model`.

  Attributes:
    d_model, num_layers, num_heads, mlp_dim: transformer sizes.
    max_len: rows of the position table (the longest user window).
    dropout: rate on embeddings, attention and MLP outputs.
    dtype: compute dtype, "float32" or "bfloat16" (params and accumulation stay f32).
    combine: "sum" or "concat" (then project) of the per-feature input embeddings.
    remat: one of REMAT_POLICIES.
    scan_layers: the blocks' params stacked on a "layers" axis and run by a scan, or one param tree per block
      (`layer_<i>`): a shape key (it changes the checkpoint's layout).
    scan_unroll: blocks per iteration of that scan (jax.lax.scan's unroll; scan_layers only): 1 = a rolled loop
      whose compile time is flat in depth, 0 = every block (no loop). Not a shape key: the params stay stacked.
      On CPU the rolled loop's stacked residuals cost up to a third of a bf16 step (BUILD_NOTES, Performance notes).
    vocab_pad_multiple: vocabulary tables are padded to a multiple of this.
    backbone: "transformer" (Decoder) or "lstm" (RecurrentDecoder; num_heads and mlp_dim are then unused).
    event_factorization: "independent" (the study's: an event's features independent given the history) or
      "chain" (the chain rule over `event_order`: the exact joint; gpt_ads.model.chain).
    event_order: the chain's order, comma-separated feature names; the unnamed follow, sampled features first
      (gpt_ads.model.chain.event_order).
    attention: "xla" (any device) or "cudnn" (NVIDIA GPUs: cuDNN's fused flash attention, causal by the kernel,
      packed segments by a mask; needs dtype bfloat16 and a head width that is a multiple of 8, at most 128).
    xent_chunk: time steps per chunk of the fused head matmul + cross-entropy that training runs for exact
      (softmax) features of at least objective.FUSED_MIN_VOCAB padded ids (gpt_ads.objective.losses.
      linear_softmax_xent; memory O(b chunk v), not O(b t v)); 0 = always form the [b, t, v] logits and
      differentiate through them.
    head_dtype: compute dtype of the heads' logits matmuls ("" = dtype): the exact heads' and, in training, the
      sampled heads' against their negatives; the accumulation, the logits, the softmax and the cross-entropy
      stay f32 (so does the exact evaluation of sampled features). bfloat16 with an f32 body cuts the cost of a
      large vocabulary's matmuls where the hardware has bf16 units (MaxText's bf16 logits dot; ~10% of the ML-1M
      step), without a bf16 body's casts. Resolved by the `logits_dtype` property.
  """
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  max_len: int = 64
  dropout: float = 0.0
  dtype: str = "float32"
  combine: str = "sum"
  remat: str = "none"
  scan_layers: bool = True
  scan_unroll: int = 1
  vocab_pad_multiple: int = 128
  backbone: str = "transformer"
  event_factorization: str = "independent"
  event_order: str = ""
  attention: str = "xla"
  xent_chunk: int = 4
  head_dtype: str = ""

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f"config.model.d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
    if self.combine not in ("sum", "concat"):
      raise ValueError(f"config.model.combine={self.combine!r} must be 'sum' or 'concat'")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"config.model.remat={self.remat!r} must be one of {sorted(REMAT_POLICIES)}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"config.model.dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
    if self.head_dtype not in ("", "float32", "bfloat16"):
      raise ValueError(f"config.model.head_dtype={self.head_dtype!r} must be '', 'float32' or 'bfloat16' "
                       "('' = config.model.dtype)")
    if self.backbone not in BACKBONES:
      raise ValueError(f"config.model.backbone={self.backbone!r} must be one of {list(BACKBONES)}")
    if self.attention not in ATTENTION:
      raise ValueError(f"config.model.attention={self.attention!r} must be one of {list(ATTENTION)}")
    head_dim = self.d_model // self.num_heads
    if self.attention == "cudnn" and (self.dtype != "bfloat16" or head_dim % 8 or head_dim > 128):
      raise ValueError(f"config.model.attention='cudnn' needs dtype='bfloat16' and a head width (d_model / "
                       f"num_heads = {head_dim}) that is a multiple of 8 and at most 128; use attention='xla'")
    if self.scan_unroll < 0:
      raise ValueError(f"config.model.scan_unroll={self.scan_unroll} must be >= 0 (1 = a rolled loop, 0 = all blocks)")
    if self.xent_chunk < 0:
      raise ValueError(f"config.model.xent_chunk={self.xent_chunk} must be >= 0 (0 = no fusion)")
    if self.event_factorization not in FACTORIZATIONS:
      raise ValueError(f"config.model.event_factorization={self.event_factorization!r} must be one of "
                       f"{list(FACTORIZATIONS)}")

  @property
  def logits_dtype(self) -> jnp.dtype:
    """The operand dtype of the heads' logits matmuls (`head_dtype`, else `dtype`)."""
    return jnp.dtype(self.head_dtype or self.dtype)

  @classmethod
  def from_config(cls, model_cfg) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in model_cfg.items() if k in fields}
    return cls(**d)

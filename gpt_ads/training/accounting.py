"""Parameter counts and training FLOPs.

Non-embedding parameters (the study's x-axis) are every parameter except vocabulary- and position-sized ones:
input embedding tables, the position table, untied output tables, output biases over a vocabulary, and the
dense logit kernels of `softmax` heads (their "unembedding"). What remains: the decoder blocks, the final norm,
input projections, the query projections of sampled heads and, under the "chain" factorization, the chain
inputs of the heads (gpt_ads.model.chain).

Training FLOPs per input position (forward + backward = 3 x forward, a multiply-add = 2 FLOPs):
    6 * N_nonembed                                 matmuls of the decoder and projections
  + 12 * L * t * d                                 attention: q.k scores and the weighted sum of values, 2 t d
                                                   FLOPs each forward (t = sequence length; the kernel does not
                                                   skip masked keys, so all t count), x 3 for training
  + Σ_softmax 6 * d * V_j                          dense logits
  + Σ_sampled 6 * e_j * (n_j + 1)                  scoring the label and n_j shared negatives
With `model.backbone="lstm"` there is no attention term (its gate matmuls are in 6 N).
Evaluation with the exact full softmax is not counted. Checked against XLA's cost analysis of the compiled
train step (`tests/training/accounting_test.py`): the formula is below XLA's count by less than 5% (measured 2.9% at
d=256, 3.8% at d=128, 4.1% at d=64 with t=64; 8.7% at d=32, where the uncounted work weighs more) and never above
it: XLA also counts norms, softmaxes and the AdamW update, which the formula leaves out. XLA counts a `scan` body
once, so compare with `scan_layers=False`.
"""

import flax
import flax.linen as nn
import jax
import numpy as np

from gpt_ads import features as features_lib
from gpt_ads.model import init_params
from gpt_ads.model.embed import padded_vocab


def _is_embedding(path: tuple[str, ...], schema: features_lib.Schema) -> bool:
  if path[0] == "embed":
    return path[1] in schema.names or path[1] == "positions"
  if path[0] == "heads" and path[1] in schema.names:  # not the chain inputs (`chain_<name>`): non-embedding
    spec = schema[path[1]]
    if spec.sampled:
      return path[2] in ("bias", "table")
    return True  # the dense logit kernel and bias of a softmax head
  return False


def param_counts(params, schema: features_lib.Schema) -> dict[str, int]:
  """{"params": total, "non_embedding_params": ...} of a (possibly abstract) params tree."""
  flat = flax.traverse_util.flatten_dict(params)
  total = emb = 0
  for path, x in flat.items():
    n = int(np.prod(x.shape))
    total += n
    if _is_embedding(path, schema):
      emb += n
  return {"params": total, "non_embedding_params": total - emb}


def flops_per_position(model_cfg, schema: features_lib.Schema, non_embedding_params: int, seq_len: int) -> float:
  """Training FLOPs per input position (see the module docstring)."""
  flops = 6.0 * non_embedding_params
  if model_cfg.backbone == "transformer":  # the LSTM backbone has no attention term
    flops += 12.0 * model_cfg.num_layers * seq_len * model_cfg.d_model
  for f in schema:
    if f.sampled:
      flops += 6.0 * f.embed_dim * (f.num_negatives + 1)
    else:
      flops += 6.0 * model_cfg.d_model * padded_vocab(f.vocab_size, model_cfg.vocab_pad_multiple)
  return flops


def abstract_params(model) -> dict:
  """The model's params as ShapeDtypeStructs (no memory, no compute)."""
  return nn.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))

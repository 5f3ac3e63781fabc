"""Row-sparse ("lazy") AdamW for the per-id parameters of large sampled-softmax features.

A sampled feature's loss reads a few thousand rows of its tables per step (the batch's ids and the shared
negatives), but autodiff of a gather is a dense [v, e] scatter-add, and AdamW then reads and writes params, mu
and nu over all v rows: the step grows with the vocabulary. With `config.train.sparse_update_min_vocab` = m > 0,
every sampled_softmax feature whose vocab_size is >= m (`features`) is updated row-sparsely instead, as TF's
LazyAdam and TorchRec's row-wise optimizers do. In one train step (gpt_ads.training.steps.train_step):

  1. `Rows.of`: the rows the step reads, u [k] sorted and unique: PAD, the feature's ids in the batch (the
     inputs; the labels are the same ids one position on) and the negatives of every micro-batch (now drawn
     before the loss, from the same rngs as before). k is the static bound 1 + b t + micro-batches x n, rounded
     up to the table padding; free slots hold distinct ids past the table, which read zeros and write nowhere.
  2. The view: each per-id parameter (`heads.id_param_paths`: input table, output bias, untied output table)
     and its AdamW moments gathered at u ([k, e] and [k]; `gather`); the feature's ids in the batch and its
     negatives remapped to their slots in u (`remap`, `remap_negatives`; PAD stays 0); the model built for a
     k-id vocabulary (`model`). The log Q of negatives and labels is computed from the global ids, before
     remapping. Everything else is as in the dense step.
  3. The gradient is taken w.r.t. the view (so [k, e], never [v, e]); optax's own update (global-norm clipping
     over every gradient, the slabs included, then AdamW) runs on the view; the rows are written back at u
     (`scatter`). Per step, these tables cost O(k e), nothing O(v e).

Semantics (lazy AdamW, as TF LazyAdam and torch SparseAdam): a row's moments decay and its parameters move
only in steps that read it; rows a step does not read are bitwise unchanged. The bias correction and the
learning rate follow the optimizer's one global step count, not a per-row count (that would need another [v]
state array and a different checkpoint layout). A read row whose gradient is zero (PAD, or an id seen only
as a row's first event) still takes its momentum step, as every row does in dense AdamW. Weight decay does not
arise: tables and biases are not decayed (gpt_ads.training.optim.decay_mask). The optimizer state keeps its dense
layout (full [v, e] mu and nu), so checkpoints are the same either way and a run may switch on resume. The
gradient norm (clipping and the logged metric) equals the dense one: rows not read have zero gradient.
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp

from gpt_ads import features as features_lib
from gpt_ads.model.embed import padded_vocab
from gpt_ads.model.heads import id_param_paths


def features(schema: features_lib.Schema, min_vocab: int) -> tuple[features_lib.FeatureSpec, ...]:
  """The features updated row-sparsely: sampled_softmax features with vocab_size >= min_vocab (0 = none).

  Softmax features are never: their dense [b, t, v] logits cost O(v) per step anyway, and their labels index
  the logits by global id."""
  return tuple(f for f in schema.sampled if min_vocab > 0 and f.vocab_size >= min_vocab)


@dataclasses.dataclass(frozen=True)
class Rows:
  """The rows one train step reads from the row-sparse features' per-id parameters, and the view they make.

  Built inside the jitted step; with no row-sparse feature every method is the identity.

  Attributes:
    ids: {feature: [k] int32 sorted rows}; the slots after the rows read hold distinct ids >= the table's rows.
    schema: the full schema.
    params_def: the tree structure of params (recognizes the params-shaped trees of an optimizer state).
  """
  ids: dict[str, jax.Array]
  schema: features_lib.Schema
  params_def: jax.tree_util.PyTreeDef

  @classmethod
  def of(cls, params, batch: dict[str, jax.Array], negs: list[dict], *, schema: features_lib.Schema,
         min_vocab: int, pad_multiple: int) -> "Rows":
    """params: the full params; batch: {name: [b, t]} global ids; negs: each micro-batch's {name: Negatives}."""
    ids = {}
    for f in features(schema, min_vocab):
      read = jnp.concatenate([jnp.full((1,), features_lib.PAD_ID, jnp.int32), batch[f.name].reshape(-1)]
                             + [n[f.name].ids for n in negs])  # [1 + b t + micro-batches n]
      k, v = padded_vocab(read.size, pad_multiple), padded_vocab(f.vocab_size, pad_multiple)
      u = jnp.unique(read, size=k, fill_value=v)  # [k] sorted, PAD first, then v for every free slot
      ids[f.name] = jnp.where(u == v, v + jnp.arange(k, dtype=u.dtype), u)
    return cls(ids, schema, jax.tree.structure(params))

  def _paths(self) -> dict[tuple[str, ...], str]:
    """{param path: feature} of every row-sparse per-id parameter."""
    return {p: name for name in self.ids for p in id_param_paths(self.schema[name])}

  def _slots(self, name: str, ids: jax.Array) -> jax.Array:
    return jnp.searchsorted(self.ids[name], ids).astype(jnp.int32)  # ids are in u: their index

  def remap(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch with each row-sparse feature's ids replaced by their slots in the view."""
    return {k: self._slots(k, x) if k in self.ids else x for k, x in batch.items()}

  def remap_negatives(self, negs: dict) -> dict:
    """{name: Negatives} with the ids of row-sparse features remapped (their log Q stays the global ids')."""
    return {k: n._replace(ids=self._slots(k, n.ids)) if k in self.ids else n for k, n in negs.items()}

  def model(self, model):
    """`model` with each row-sparse feature's vocabulary the k slots of the view (tables [k, e], bias [k])."""
    if not self.ids:
      return model
    specs = tuple(dataclasses.replace(f, vocab_size=self.ids[f.name].shape[0]) if f.name in self.ids else f
                  for f in model.schema)
    return model.clone(schema=features_lib.Schema(specs))

  def _is_params(self, x) -> bool:
    return jax.tree.structure(x) == self.params_def

  def gather(self, tree):
    """The view of params, or of an optimizer state (in its params-shaped trees: AdamW's mu and nu): each
    row-sparse per-id parameter [v, ...] replaced by its rows [k, ...] (zeros at free slots)."""
    if not self.ids:
      return tree

    def view(p):
      flat = flax.traverse_util.flatten_dict(p, keep_empty_nodes=True)
      for path, name in self._paths().items():
        flat[path] = jnp.take(flat[path], self.ids[name], axis=0, mode="fill", fill_value=0,
                              indices_are_sorted=True)
      return flax.traverse_util.unflatten_dict(flat)

    return jax.tree.map(lambda x: view(x) if self._is_params(x) else x, tree, is_leaf=self._is_params)

  def scatter(self, full, view):
    """`view` (a gathered tree after its update) with each row-sparse parameter written back into `full`'s
    array at the rows read (free slots dropped): the full tree after the step."""
    if not self.ids:
      return view

    def write(full_p, view_p):
      flat, rows = (flax.traverse_util.flatten_dict(t, keep_empty_nodes=True) for t in (full_p, view_p))
      for path, name in self._paths().items():
        rows[path] = flat[path].at[self.ids[name]].set(rows[path], mode="drop", indices_are_sorted=True,
                                                       unique_indices=True)
      return flax.traverse_util.unflatten_dict(rows)

    return jax.tree.map(lambda f, v: write(f, v) if self._is_params(f) else v, full, view,
                        is_leaf=self._is_params)

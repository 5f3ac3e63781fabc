"""Meshes and shardings. Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and
optimizer state sharded), `tensor` (heads / MLP / vocabulary). `config.sharding.rules` maps the model's logical
axis names (gpt_ads.model.axes) onto these; model code never names a mesh axis.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding

from gpt_ads.model import axes

MESH_AXES = ("data", "fsdp", "tensor")

# Logical -> mesh axis rules: the batch over (data, fsdp); FSDP shards the model width of every parameter;
# tensor parallelism shards heads, MLP and vocabularies (and their activations).
DEFAULT_RULES = (
    (axes.BATCH, ("data", "fsdp")),
    (axes.LENGTH, None),
    (axes.EMBED, None),
    (axes.HEADS, "tensor"),
    (axes.KV, None),
    (axes.MLP, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.P_EMBED, "fsdp"),
    (axes.P_HEADS, "tensor"),
    (axes.P_KV, None),
    (axes.P_MLP, "tensor"),
    (axes.P_VOCAB, "tensor"),
    (axes.P_FEATURE, None),
    (axes.P_POSITION, None),
    (axes.P_LAYERS, None),
)



def _without(rules, *mesh_axes) -> tuple:
  """`rules` with the given mesh axes removed (an axis no rule maps to stays unsharded)."""
  out = []
  for name, target in rules:
    targets = () if target is None else (target if isinstance(target, tuple) else (target,))
    kept = tuple(t for t in targets if t not in mesh_axes)
    out.append((name, kept[0] if len(kept) == 1 else (kept or None)))
  return tuple(out)


# Named rule sets (`config.sharding.rule_set`); `config.sharding.rules`, when non-empty, replaces them.
RULE_SETS = {
    "fsdp_tensor": DEFAULT_RULES,                              # whatever the mesh sizes ask for
    "fsdp": _without(DEFAULT_RULES, "tensor"),                 # params + optimizer state over fsdp
    "tensor": _without(DEFAULT_RULES, "fsdp"),                 # heads / MLP / vocab over tensor only
    "data_parallel": tuple((n, ("data", "fsdp") if n == axes.BATCH else None) for n, _ in DEFAULT_RULES),
}


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves `config.mesh` ({data, fsdp, tensor}, one of them may be -1 = fill) against the device count."""
  shape = [int(mesh_cfg[a]) for a in MESH_AXES]
  fills = [i for i, s in enumerate(shape) if s == -1]
  if len(fills) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
  known = int(np.prod([s for s in shape if s != -1]))
  if fills:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices are not divisible by "
                       f"{known}; change the fixed mesh sizes")
    shape[fills[0]] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))} has {int(np.prod(shape))} devices but "
                     f"{num_devices} are available; make the product match or set one axis to -1")
  return tuple(shape)


def dcn_shape(mesh_cfg) -> tuple[int, ...]:
  """`config.mesh.dcn_<axis>`: how many slices / hosts each mesh axis spans over the slow network (default 1)."""
  shape = tuple(int(mesh_cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES)
  if any(s < 1 for s in shape):
    raise ValueError(f"config.mesh.dcn_*: sizes must be >= 1, got {dict(zip(MESH_AXES, shape))}")
  return shape


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh. With dcn_* > 1 a hybrid mesh: each axis = ICI part x DCN part, so that
  collectives of the fast axes stay inside a slice (TPU: `slice_index`; elsewhere one process = one granule)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  dcn = dcn_shape(mesh_cfg)
  if any(d > 1 for d in dcn):
    bad = [a for a, s, d in zip(MESH_AXES, shape, dcn) if s % d]
    if bad:
      raise ValueError(f"config.mesh: the sizes of {bad} are not divisible by their dcn_* sizes {dcn}")
    ici = tuple(s // d for s, d in zip(shape, dcn))
    per_slice = not hasattr(devices[0], "slice_index")
    try:
      grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices, process_is_granule=per_slice)
    except (ValueError, AssertionError) as e:
      raise ValueError(f"config.mesh dcn sizes {dict(zip(MESH_AXES, dcn))} do not fit the "
                       f"{'processes' if per_slice else 'slices'} of these {len(devices)} devices ({e}); "
                       "their product must equal the number of slices (TPU) or processes") from None
    return Mesh(grid, MESH_AXES)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, AssertionError):  # device kinds it has no layout for: plain order
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def rules(config) -> tuple[tuple[str, Any], ...]:
  """The logical -> mesh rules: `config.sharding.rules` if set, else the named `config.sharding.rule_set`."""
  if not config.sharding.rules:
    if config.sharding.rule_set not in RULE_SETS:
      raise ValueError(f"config.sharding.rule_set={config.sharding.rule_set!r} is not one of {sorted(RULE_SETS)}")
    return RULE_SETS[config.sharding.rule_set]
  out = []
  for name, target in config.sharding.rules:
    out.append((name, tuple(target) if isinstance(target, list) else target))
  return tuple(out)


def logical_sharding(mesh: Mesh, logical: Sequence[str | None], rule_set) -> NamedSharding:
  return NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(logical), rule_set))


def batch_sharding(mesh: Mesh, rule_set) -> NamedSharding:
  """Sharding of [b, t] batch arrays: the batch over the data-parallel axes."""
  return logical_sharding(mesh, (axes.BATCH, axes.LENGTH), rule_set)


def tree_shardings(mesh: Mesh, abstract_boxed_tree, rule_set):
  """Mesh shardings of a tree whose leaves may be flax `LogicallyPartitioned` boxes (unboxed leaves: replicated)."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rule_set)


def data_parallel_size(mesh: Mesh, rule_set) -> int:
  """How many ways the batch is split (the product of the mesh axes the batch maps to)."""
  spec = batch_sharding(mesh, rule_set).spec[0]
  names = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
  return int(np.prod([mesh.shape[n] for n in names])) if names else 1

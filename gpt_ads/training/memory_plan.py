"""`gpt-ads-train ... --dry_run`: size a run before paying for it.

Builds the configured mesh, model and sharded train state abstractly (no parameter is materialized), lowers and
compiles the real train step for one global batch, and reports per device:
  params     bytes of this device's parameter shards (from the shardings: shape / mesh split, summed);
  optimizer  bytes of this device's optimizer-state shards (AdamW moments, counters);
  compiled   XLA's `memory_analysis()` of the compiled step: arguments, outputs, and temporaries (activations,
             gradients, collectives' buffers; what remat policies change).
Prints a table, writes `WORKDIR/memory_plan.json`. Needs no data: the schema comes from the config (generated
data) or from `config.data.dir`'s schema.json.
"""

import os

import jax
import numpy as np
from absl import logging

from gpt_ads import config_lib, features
from gpt_ads import model as model_lib
from gpt_ads.data import datasets, pipeline, store
from gpt_ads.training import optim, sharding, steps
from gpt_ads.training import train_state as train_state_lib
from gpt_ads.training import workdir as workdir_lib


def _device_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs carrying NamedShardings (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape)) * leaf.dtype.itemsize
  return total


def _total_bytes(abstract_tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract_tree))


def plan(config) -> dict:
  """The memory plan of one train step of `config` on the current devices (see the module docstring)."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  rule_set = sharding.rules(config)
  config_lib.check_batch(config, sharding.data_parallel_size(mesh, rule_set))
  if config.data.dir:
    schema = datasets.schema_for(store.open_dir(config.data.dir), config)
  else:
    schema = features.Schema.from_config(config.schema.features)
  model = model_lib.from_config(schema, config)
  tx, lr_schedule = optim.make(config.train)
  abstract, state_shardings = train_state_lib.abstract_and_shardings(model, tx, mesh, rule_set)
  data_sharding = sharding.batch_sharding(mesh, rule_set)
  b, t = config.train.batch_size, config.model.max_len
  batch = {k: jax.ShapeDtypeStruct((b, t), np.int32, sharding=data_sharding)
           for k in (*schema.names, pipeline.SEGMENT_IDS, pipeline.POSITIONS)}
  unigram_log_q = {f.name: jax.ShapeDtypeStruct((f.vocab_size,), np.float32)
                   for f in schema.sampled if f.sampler in ("unigram", "in_batch")}
  step = steps.jit_train_step(model=model, tx=tx, lr_schedule=lr_schedule, unigram_log_q=unigram_log_q,
                              rule_set=rule_set, grad_accum_steps=config.train.grad_accum_steps,
                              state_shardings=state_shardings, data_sharding=data_sharding,
                              sparse_min_vocab=config_lib.option(config.train, "sparse_update_min_vocab"))
  with jax.set_mesh(mesh):
    compiled = step.lower(abstract, batch, jax.ShapeDtypeStruct((), jax.random.key(0).dtype)).compile()
  mem = compiled.memory_analysis()
  out = {
      "devices": jax.device_count(),
      "mesh": dict(zip(sharding.MESH_AXES, (int(s) for s in mesh.devices.shape))),
      "remat": config.model.remat,
      "dtype": config.model.dtype,
      "global_batch": b,
      "max_len": t,
      "params_total_bytes": _total_bytes(abstract.params),
      "params_bytes_per_device": _device_bytes(abstract.params),
      "optimizer_total_bytes": _total_bytes(abstract.opt_state),
      "optimizer_bytes_per_device": _device_bytes(abstract.opt_state),
  }
  if mem is not None:
    for key in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                "temp_size_in_bytes", "generated_code_size_in_bytes"):
      out[f"compiled_{key}"] = int(getattr(mem, key, 0) or 0)
    # Arguments are donated into the outputs, so the peak is arguments + temporaries (+ what is not aliased).
    out["compiled_peak_bytes_per_device"] = (out["compiled_argument_size_in_bytes"] +
                                             out["compiled_output_size_in_bytes"] -
                                             out["compiled_alias_size_in_bytes"] +
                                             out["compiled_temp_size_in_bytes"])
  return out


def _gib(n: int) -> str:
  return f"{n / 2**30:8.3f} GiB"


def run(config, workdir: str) -> dict:
  """Prints the plan and writes `workdir/memory_plan.json` (process 0)."""
  workdir_lib.check_workdir(workdir)
  result = plan(config)
  if jax.process_index() == 0:
    lines = [f"memory plan: {result['devices']} devices, mesh {result['mesh']}, batch {result['global_batch']} x "
             f"{result['max_len']}, remat={result['remat']}, dtype={result['dtype']}",
             f"  parameters        {_gib(result['params_bytes_per_device'])} per device"
             f"   (total {_gib(result['params_total_bytes']).strip()})",
             f"  optimizer state   {_gib(result['optimizer_bytes_per_device'])} per device"
             f"   (total {_gib(result['optimizer_total_bytes']).strip()})"]
    if "compiled_temp_size_in_bytes" in result:
      lines += [f"  activations/temp  {_gib(result['compiled_temp_size_in_bytes'])} per device (XLA)",
                f"  step peak         {_gib(result['compiled_peak_bytes_per_device'])} per device (XLA: args + "
                "outputs - aliased + temp)"]
    print("\n".join(lines))
    workdir_lib.write_json(os.path.join(workdir, "memory_plan.json"), result)
  logging.info("memory plan: %s", result)
  return result


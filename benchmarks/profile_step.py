"""Where a preset's train step spends its time: a jax.profiler trace of the real step, by kind of XLA op.

    python benchmarks/profile_step.py --presets=nano,small [--steps=3] [--top=12] [--out=FILE.json]
        [--set=model.scan_layers=false ...]   # config overrides

Runs the step `benchmarks/throughput.py` times (default config, random ids, 64 x 64 batch) under
jax.profiler.trace (a Perfetto trace: one event per executed XLA op), maps each op to the operations it fuses
(the compiled HLO text) and sums its time into one class: `dot` (a matmul or convolution inside), `scatter`,
`gather`, `sort`, `reduce`, `copy/transpose` (data movement only: copy, transpose, concatenate, slices, pad,
dynamic-update-slice) or `elementwise` (the rest). Prints the classes and the top ops with their HLO op_name
(the JAX source of the op); --out gets the same as JSON. Run it alone: a second process halves every number.
"""

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import os
import re
import tempfile

# benchmarks/throughput.py, loaded by path: the same step and config.
_SPEC = importlib.util.spec_from_file_location(
    "throughput", os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput.py"))
throughput = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(throughput)

_MOVES = {"copy", "transpose", "concatenate", "bitcast", "dynamic-update-slice", "dynamic-slice", "slice", "pad",
          "reshape", "broadcast", "tuple", "get-tuple-element", "parameter", "constant"}
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")


def _parse_hlo(text: str):
  """({instruction: (opcode, called computations, op_name)}, {computation: [instruction names]})."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      computations[current] = []
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name = m.group(1)
      op_name = re.search(r'op_name="([^"]*)"', line)
      instructions[name] = (m.group(2), re.findall(r"calls=%?([\w.\-]+)", line), op_name.group(1) if op_name else "")
      computations[current].append(name)
  return instructions, computations


def _opcodes(name: str, instructions, computations, depth: int = 0) -> set:
  op, calls, _ = instructions.get(name, ("?", [], ""))
  out = {op}
  for computation in calls:
    for inner in computations.get(computation, []):
      out |= _opcodes(inner, instructions, computations, depth + 1) if depth < 4 else {instructions[inner][0]}
  return out


def op_class(opcodes: set) -> str:
  for kind, ops in (("dot", {"dot", "convolution"}), ("scatter", {"scatter"}), ("gather", {"gather"}),
                    ("sort", {"sort"})):
    if opcodes & ops:
      return kind
  if "reduce" in opcodes or "reduce-window" in opcodes:
    return "reduce"
  return "copy/transpose" if opcodes <= _MOVES | {"fusion", "?"} else "elementwise"


def profile(preset: str, steps: int, overrides: list[str], top_n: int) -> dict:
  import jax
  config = throughput._config(preset)
  for item in overrides:
    key, value = item.split("=", 1)
    section, name = key.split(".", 1)
    old = config[section][name]
    config[section][name] = (value.lower() in ("1", "true")) if isinstance(old, bool) else type(old)(value)
  step = throughput.Step(config)
  seconds = step.seconds_per_step(5)  # compiles and warms up
  trace_dir = tempfile.mkdtemp(prefix="gpt_ads_profile_")
  with jax.set_mesh(step.mesh):
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(steps):
      step.state, metrics = step.step(step.state, step.batch, step.rng)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    hlo = step.step.lower(step.abstract, step.batch, step.rng).compile().as_text()
  trace = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(trace) as fh:
    events = json.load(fh)
  events = events["traceEvents"] if isinstance(events, dict) else events
  instructions, computations = _parse_hlo(hlo)
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in instructions:
      per_op[e["name"]] += e["dur"] / 1e3 / steps  # ms per step
  classes = collections.Counter()
  for name, ms in per_op.items():
    classes[op_class(_opcodes(name, instructions, computations))] += ms
  top = [{"op": name, "ms": round(ms, 3), "class": op_class(_opcodes(name, instructions, computations)),
          "op_name": instructions[name][2]} for name, ms in per_op.most_common(top_n)]
  total = sum(classes.values())
  return {"preset": preset, "overrides": overrides, "step_ms": round(seconds * 1e3, 2),
          "profiled_op_ms": round(total, 2),
          "classes_ms": {k: round(v, 2) for k, v in classes.most_common()},
          "classes_share": {k: round(v / total, 3) for k, v in classes.most_common()}, "top_ops": top}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="nano,small", help="model presets (gpt_ads.config_lib.MODEL_SIZES)")
  parser.add_argument("--steps", type=int, default=3, help="profiled steps (after the warm-up ones)")
  parser.add_argument("--top", type=int, default=12, help="how many of the slowest ops to list")
  parser.add_argument("--out", default=None, help="JSON file to write")
  parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
  args = parser.parse_args()
  rows = []
  for preset in args.presets.split(","):
    row = profile(preset, args.steps, args.set, args.top)
    rows.append(row)
    print(f"{preset}: step {row['step_ms']:.1f} ms (timed), ops {row['profiled_op_ms']:.1f} ms (profiled); "
          + ", ".join(f"{k} {v:.0%}" for k, v in row["classes_share"].items()))
    for t in row["top_ops"]:
      print(f"  {t['ms']:7.2f} ms  {t['class']:<14} {t['op']:<28} {t['op_name'][-90:]}")
  if args.out:
    with open(args.out, "w") as fh:
      json.dump({"rows": rows}, fh, indent=1)
    print(f"-> {args.out}")


if __name__ == "__main__":
  main()

"""Training speed against the device's limits: matmul peak, MFU per preset, memory, compile and vocabulary scaling.

    python benchmarks/throughput.py --out=/tmp/throughput.json [--presets=nano,...,xl] [--steps=5]
    python benchmarks/throughput.py --platform=gpu --presets=small,large,xl,xxl --batch_size=256 \
        --attention=xla,cudnn --parts=presets --out=/tmp/gpu.json          # benchmarks/device.sh runs this
    python benchmarks/throughput.py --dry_run --presets=xl,xxl --batch_size=256 --out=/tmp/plan.json

--platform=cpu|gpu|tpu (default: JAX's default backend; a platform JAX does not see is a one-line error). On
gpu / tpu MFU divides by the chip's PUBLISHED dense bf16 peak (PUBLISHED_BF16_TFLOPS by device kind, or
--peak_tflops), the figure MFU is quoted against elsewhere; on cpu by the matmul peak measured around each preset
(below), since CPUs publish none that XLA reaches. Every preset row also has `tokens_per_sec_per_chip` (events
are the tokens), `planned_peak_bytes_per_device` (the `gpt-ads-train --dry_run` plan of the same config,
gpt_ads.training.memory_plan) and, where the device reports it (GPU, TPU), `measured_peak_bytes_per_device`
(the allocator's peak_bytes_in_use after the preset's steps: a running maximum, so presets go in increasing size)
and `memory_vs_plan` = measured / planned. `--dry_run`: the plans alone, no step run. `--attention=xla,cudnn`
times each preset once per config.model.attention value (cudnn: NVIDIA GPUs, bf16).

One run measures, on the devices JAX sees (run it alone: a second process on the cores halves every number):
  peak          a jitted 4096 x 4096 matmul in float32, and with bfloat16 inputs accumulating in float32
                (`preferred_element_type`): median GFLOP/s over repeats.
  presets       for each model preset (gpt_ads.config_lib.MODEL_SIZES) the default config's real train step
                (gpt_ads.training.steps.jit_train_step: model, factorized loss, 1,024 shared negatives for ad_id, AdamW)
                on random ids at the default batch (64 x 64), model dtype bfloat16 (and float32 with --f32):
                events/s and MFU = model FLOPs per event (gpt_ads.training.accounting) x events/s / the bf16 peak,
                measured again just before and just after that preset's steps (the higher of the two: a shared
                VM's rate drifts within minutes). Also `mfu_vs_f32_peak`: on a CPU without bf16 arithmetic
                (e.g. AVX2-only) bf16 matmuls are emulated and slower than f32, so that is the stricter figure.
  compile       seconds to lower + compile the train step with 2 and with 32 layers (d_model 64; a rolled layer
                scan, `scan_unroll=1`, so the ratio should stay near 1).
  vocab         step time of the train step whose sampled feature (ad_id) has a 10K and a 1M vocabulary,
                1,024 negatives both times (the loss touches only sampled rows; the ratio shows what else scales),
                with dense AdamW (`sparse_update_min_vocab=0`) and with the setting the README recommends for
                large tables, `sparse_update_min_vocab=100_000` (row-sparse "lazy" AdamW for tables of 100K+
                ids, gpt_ads.training.sparse_update; the 10K table stays dense under it).
  eval_memory   XLA's temp-buffer bytes of the exact full-vocabulary evaluation step at 10K and 1M ids
                (vocabulary processed in chunks of config.eval.vocab_chunk: should be bounded).
--parts chooses among presets, compile, vocab and eval_memory (default all four).
--out gets JSON with `best_mfu`, `vocab_step_ratio` (1M / 10K step time with the recommended row-sparse setting;
the dense AdamW ratio is `vocab.dense_ratio`), `compile_ratio` (32 / 2 layers; both null when their part is not
run), `presets` (one row per preset), `platform`, `device_kind` and every raw figure.
"""

import datetime
import functools
import json
import os
import statistics
import sys
import time

from absl import app, flags, logging

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")

_OUT = flags.DEFINE_string("out", None, "JSON file to write.", required=True)
_PRESETS = flags.DEFINE_list("presets", ["nano", "micro", "tiny", "small", "medium", "large", "xl"],
                             "Model presets to time (gpt_ads.config_lib.MODEL_SIZES).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after one warm-up step).")
_F32 = flags.DEFINE_bool("f32", False, "Also time every preset in float32.")
_PLATFORM = flags.DEFINE_enum("platform", None, ["cpu", "gpu", "tpu"],
                              "Devices to measure (default: JAX's default backend).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Dense bf16 peak per chip, TFLOP/s, for MFU on gpu / tpu "
                                  "(default: PUBLISHED_BF16_TFLOPS of the device kind).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (rows of max_len events) of the preset rows; "
                              "default the config's 64 (accelerators want more, e.g. 256).")
_ATTENTION = flags.DEFINE_list("attention", ["xla"], "config.model.attention values to time per preset.")
_PARTS = flags.DEFINE_list("parts", ["presets", "compile", "vocab", "eval_memory"], "What to measure.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Only each preset's memory plan (gpt-ads-train --dry_run's); no step.")

# Published dense (no sparsity) bf16 peaks per chip, TFLOP/s, by a substring of jax's device_kind; the first
# match wins (more specific names first). MFU on accelerators is quoted against these.
PUBLISHED_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0),
                         ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("TPU v6", 918.0), ("TPU v5 lite", 197.0),
                         ("TPU v5e", 197.0), ("TPU v5", 459.0), ("TPU v4", 275.0), ("TPU v3", 123.0))


def _log(line: str) -> None:
  print(f"[throughput {datetime.datetime.now():%H:%M:%S}] {line}", flush=True)


def _median_seconds(fn, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn())  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak(n: int = 4096, repeats: int = 5, f32_too: bool = True) -> dict:
  """GFLOP/s of a jitted n x n matmul: bfloat16 inputs with float32 accumulation (and float32)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f32 = jax.jit(lambda x, y: x @ y)
  bf16 = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  flops = 2 * n ** 3
  out = {"bf16_gflops": flops / _median_seconds(lambda: bf16(a16, b16), repeats) / 1e9, "n": n}
  if f32_too:
    out["f32_gflops"] = flops / _median_seconds(lambda: f32(a, b), repeats) / 1e9
  return out


class Step:
  """The default config's jitted train step (as gpt_ads.training.train builds it) on random ids, for one config."""

  def __init__(self, config):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from gpt_ads import features
    from gpt_ads.training import accounting, optim, sharding, steps as train_steps
    from gpt_ads.training import train_state as train_state_lib
    from gpt_ads import model as model_lib
    self.config = config
    schema = features.Schema.from_config(config.schema.features)
    model = model_lib.from_config(schema, config)
    mesh = sharding.make_mesh(config.mesh)
    rule_set = sharding.rules(config)
    tx, lr = optim.make(config.train)
    abstract, shardings = train_state_lib.abstract_and_shardings(model, tx, mesh, rule_set)
    self.data_sharding = sharding.batch_sharding(mesh, rule_set)
    self.mesh, self.model, self.shardings, self.tx = mesh, model, shardings, tx
    self.step = train_steps.jit_train_step(model=model, tx=tx, lr_schedule=lr, unigram_log_q={}, rule_set=rule_set,
                                     grad_accum_steps=1, state_shardings=shardings,
                                     data_sharding=self.data_sharding,
                                     sparse_min_vocab=config.train.sparse_update_min_vocab)
    counts = accounting.param_counts(abstract.params, schema)
    b, t = config.train.batch_size, config.model.max_len
    self.counts = counts
    self.flops_per_event = accounting.flops_per_position(model.cfg, schema, counts["non_embedding_params"], t)
    rng = np.random.default_rng(0)
    self.batch = {f.name: jnp.asarray(rng.integers(2, f.vocab_size, (b, t)), jnp.int32) for f in schema}
    self.batch["segment_ids"] = jnp.ones((b, t), jnp.int32)  # one user per row, every position an event
    self.batch["positions"] = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    self.events = b * t
    self.abstract = abstract
    self.rng = jax.random.key(1)
    self.state = None

  def compile_seconds(self) -> float:
    with __import__("jax").set_mesh(self.mesh):
      t = time.perf_counter()
      self.step.lower(self.abstract, self.batch, self.rng).compile()
      return time.perf_counter() - t

  def seconds_per_step(self, steps: int) -> float:
    import jax
    from gpt_ads.training import train_state as train_state_lib
    with jax.set_mesh(self.mesh):
      if self.state is None:
        self.state = train_state_lib.create(jax.random.key(0), self.model, self.tx, self.shardings)

      def one():
        self.state, metrics = self.step(self.state, self.batch, self.rng)
        return metrics["train/loss"]
      return _median_seconds(one, steps)


def _config(preset: str | None = None, **model):
  from gpt_ads import config_lib
  c = config_lib.from_file(_DEFAULT_CONFIG + (f":size={preset}" if preset else ""))
  c.train.warmup_steps = 1
  for k, v in model.items():
    c.model[k] = v
  return c


def published_peak_tflops(device_kind: str) -> float | None:
  """The chip's dense bf16 peak from PUBLISHED_BF16_TFLOPS, None for a kind it does not list."""
  for name, tflops in PUBLISHED_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


def device_peak_bytes() -> int | None:
  """The allocator's peak bytes in use on the first local device (GPU / TPU); None where none is reported (CPU)."""
  import jax
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def planned_bytes(config) -> dict:
  """The `gpt-ads-train --dry_run` memory plan of `config` on these devices, per device."""
  from gpt_ads.training import memory_plan
  plan = memory_plan.plan(config)
  return {"planned_params_bytes_per_device": plan["params_bytes_per_device"],
          "planned_optimizer_bytes_per_device": plan["optimizer_bytes_per_device"],
          "planned_temp_bytes_per_device": plan.get("compiled_temp_size_in_bytes"),
          "planned_peak_bytes_per_device": plan.get("compiled_peak_bytes_per_device")}


def time_presets(presets, steps: int, dtypes, *, attentions=("xla",), batch_size=None, platform="cpu",
                 peak_tflops=None, dry_run=False) -> list[dict]:
  """One row per (preset, dtype, attention). On cpu the bf16 peak is measured again just before and just after
  each preset's steps and MFU divides by the higher of the two (the conservative figure): on a shared or
  throttling machine the rate moves by several x within minutes, and MFU must compare like with like.
  `peak_spread` (after / before) far from 1 means something else ran on the cores during that row. On gpu / tpu
  MFU divides by `peak_tflops` (the published peak) x the number of chips."""
  import jax
  rows, chips = [], jax.device_count()
  for preset in presets:
    for dtype in dtypes:
      for attention in attentions:
        if attention == "cudnn" and dtype != "bfloat16":
          continue  # cuDNN's fused attention is half precision only (config.model.attention)
        config = _config(preset, dtype=dtype, attention=attention)
        if batch_size:
          config.train.batch_size = batch_size
        row = {"preset": preset, "dtype": dtype, "attention": attention, "platform": platform,
               "d_model": config.model.d_model, "num_layers": config.model.num_layers,
               "batch_size": config.train.batch_size, "max_len": config.model.max_len, "chips": chips}
        if platform != "cpu" or dry_run:
          row.update(planned_bytes(config))
        if dry_run:
          rows.append(row)
          _log(f"{preset:7s} {dtype:9s} {attention:5s} planned peak "
               f"{(row['planned_peak_bytes_per_device'] or 0) / 2**30:.2f} GiB per device")
          continue
        s = Step(config)
        s.seconds_per_step(1)  # compile and warm up before the first peak, so the peaks bracket the timed steps
        if platform == "cpu":
          pb = matmul_peak(repeats=3)
        sec = s.seconds_per_step(steps)
        ev = s.events / sec
        flops = s.flops_per_event * ev
        row.update({"non_embedding_params": s.counts["non_embedding_params"], "params": s.counts["params"],
                    "flops_per_event": s.flops_per_event, "step_seconds": sec, "events_per_sec": ev,
                    "tokens_per_sec_per_chip": ev / chips, "model_gflops": flops / 1e9})
        if platform == "cpu":
          pa = matmul_peak(repeats=3)
          before, after = pb["bf16_gflops"], pa["bf16_gflops"]
          peak, peak_f32 = max(before, after), max(pb["f32_gflops"], pa["f32_gflops"])
          row.update({"peak_bf16_gflops": peak, "peak_bf16_gflops_before": before, "peak_bf16_gflops_after": after,
                      "peak_spread": after / before, "peak_f32_gflops": peak_f32,
                      "mfu_vs_f32_peak": flops / (peak_f32 * 1e9), "mfu": flops / (peak * 1e9)})
          note = (f"bf16 peak around it {before:.0f} / {after:.0f} GFLOP/s; {row['mfu_vs_f32_peak']:.1%} of the "
                  f"f32 peak {peak_f32:.0f}")
        else:
          row.update({"peak_bf16_gflops": peak_tflops * 1e3 * chips, "mfu": flops / (peak_tflops * 1e12 * chips)})
          measured = device_peak_bytes()
          row["measured_peak_bytes_per_device"] = measured
          planned = row.get("planned_peak_bytes_per_device")
          row["memory_vs_plan"] = measured / planned if measured and planned else None
          note = (f"published peak {peak_tflops:.0f} TFLOP/s per chip; memory {(measured or 0) / 2**30:.2f} GiB "
                  f"measured vs {(planned or 0) / 2**30:.2f} planned")
        rows.append(row)
        _log(f"{preset:7s} {dtype:9s} {attention:5s} {ev:10,.0f} events/s  {row['model_gflops']:9.1f} GFLOP/s  "
             f"MFU {row['mfu']:.1%} ({note})")
  return rows


def compile_scaling() -> dict:
  out = {}
  for layers in (2, 32):
    out[f"layers_{layers}_seconds"] = Step(_config("tiny", num_layers=layers, scan_unroll=1)).compile_seconds()
    _log(f"compile, {layers} layers: {out[f'layers_{layers}_seconds']:.1f} s")
  out["ratio"] = out["layers_32_seconds"] / out["layers_2_seconds"]
  return out


SPARSE_MIN_VOCAB = 100_000  # config.train.sparse_update_min_vocab recommended for large tables (README)


def _vocab_config(vocab: int, sparse_min_vocab: int = 0):
  from gpt_ads.features import NUM_RESERVED
  c = _config("small", dtype="bfloat16")
  c.data.synthetic.num_ads = vocab - NUM_RESERVED  # ad_id's vocabulary follows the generator's size
  c.train.sparse_update_min_vocab = sparse_min_vocab
  return c


def vocab_scaling(steps: int) -> dict:
  """Step times at 10K and 1M ad_id ids, dense and with the recommended row-sparse setting; `ratio` is the
  latter's 1M / 10K, `dense_ratio` the former's."""
  out = {"sparse_update_min_vocab": SPARSE_MIN_VOCAB}
  for mode, min_vocab in (("dense", 0), ("sparse", SPARSE_MIN_VOCAB)):
    prefix = "sparse_" if min_vocab else ""
    for vocab in (10_000, 1_000_000):
      sec = out[f"{prefix}vocab_{vocab}_step_seconds"] = Step(_vocab_config(vocab, min_vocab)).seconds_per_step(steps)
      _log(f"sampled ad_id, vocabulary {vocab:,}, {mode} setting: {sec * 1e3:.0f} ms/step")
    out[f"{mode}_ratio"] = out[f"{prefix}vocab_1000000_step_seconds"] / out[f"{prefix}vocab_10000_step_seconds"]
  out["ratio"] = out["sparse_ratio"]
  return out


def eval_memory() -> dict:
  import jax
  from gpt_ads.training import steps as train_steps
  out = {}
  for vocab in (10_000, 1_000_000):
    s = Step(_vocab_config(vocab))
    fn = jax.jit(functools.partial(train_steps.eval_step, model=s.model, vocab_chunk=s.config.eval.vocab_chunk,
                                   rule_set=()))
    with jax.set_mesh(s.mesh):
      mem = fn.lower(s.abstract.params, s.batch).compile().memory_analysis()
    out[f"vocab_{vocab}_temp_bytes"] = int(mem.temp_size_in_bytes)
    out[f"vocab_{vocab}_argument_bytes"] = int(mem.argument_size_in_bytes)
    _log(f"exact evaluation, vocabulary {vocab:,}: temp {mem.temp_size_in_bytes / 2**20:.1f} MiB, "
         f"arguments {mem.argument_size_in_bytes / 2**20:.1f} MiB")
  out["temp_ratio"] = out["vocab_1000000_temp_bytes"] / out["vocab_10000_temp_bytes"]
  return out


def _fail(message: str) -> None:
  """Bad flags for this machine: one line on stderr, exit status 2 (the project's bad-input policy)."""
  print(f"benchmarks/throughput.py: {message}", file=sys.stderr)
  sys.exit(2)


def _platform() -> tuple[str, float | None]:
  """-> (platform, published bf16 peak per chip in TFLOP/s or None on cpu); exits 2 with one line when the
  asked platform is not JAX's or an accelerator's peak is unknown."""
  import jax
  backend = jax.default_backend()
  platform = _PLATFORM.value or backend
  if platform != backend:
    _fail(f"--platform={platform}: JAX's default backend here is {backend} ({jax.devices()[0].device_kind}); "
             f"install jax for {platform} (e.g. jax[cuda12]) or pass --platform={backend}")
  if platform == "cpu":
    return platform, None
  kind = jax.devices()[0].device_kind
  peak = _PEAK_TFLOPS.value or published_peak_tflops(kind)
  if not peak:
    _fail(f"--platform={platform}: no published bf16 peak for device kind {kind!r} in PUBLISHED_BF16_TFLOPS; "
             "pass --peak_tflops=<dense bf16 TFLOP/s per chip>")
  return platform, peak


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  unknown = sorted(set(_PARTS.value) - {"presets", "compile", "vocab", "eval_memory"})
  if unknown:
    raise app.UsageError(f"--parts: unknown {unknown}; choose among presets, compile, vocab, eval_memory")
  logging.set_verbosity(logging.WARNING)
  import jax
  t0 = time.time()
  platform, peak_tflops = _platform()
  kind = jax.devices()[0].device_kind
  _log(f"devices: {jax.devices()} ({kind}); platform {platform}" +
       (f", published bf16 peak {peak_tflops:.0f} TFLOP/s per chip" if peak_tflops else ""))
  peak = matmul_peak()
  _log(f"matmul 4096^2: float32 {peak['f32_gflops']:.0f} GFLOP/s, bf16 in / f32 acc {peak['bf16_gflops']:.0f} GFLOP/s")
  dtypes = ("bfloat16", "float32") if _F32.value else ("bfloat16",)
  parts = set(_PARTS.value) - ({"compile", "vocab", "eval_memory"} if _DRY_RUN.value else set())
  rows = (time_presets(_PRESETS.value, _STEPS.value, dtypes, attentions=_ATTENTION.value, batch_size=_BATCH.value,
                       platform=platform, peak_tflops=peak_tflops, dry_run=_DRY_RUN.value)
          if "presets" in parts else [])
  comp = compile_scaling() if "compile" in parts else None
  vocab = vocab_scaling(_STEPS.value) if "vocab" in parts else None
  mem = eval_memory() if "eval_memory" in parts else None
  timed = [r for r in rows if r["dtype"] == "bfloat16" and "mfu" in r]
  best = max(timed, key=lambda r: r["mfu"]) if timed else None
  result = {"best_mfu": best and best["mfu"], "best_mfu_preset": best and best["preset"],
            "vocab_step_ratio": vocab and vocab["ratio"], "compile_ratio": comp and comp["ratio"],
            "platform": platform, "device_kind": kind, "published_peak_bf16_tflops_per_chip": peak_tflops,
            "dry_run": _DRY_RUN.value, "peak": peak, "presets": rows, "compile": comp, "vocab": vocab,
            "eval_memory": mem, "devices": [str(d) for d in jax.devices()], "date": f"{datetime.date.today()}",
            "command": " ".join(sys.argv), "wall_seconds": time.time() - t0}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + ".tmp", "w") as fh:
    json.dump(result, fh, indent=2)
  os.replace(_OUT.value + ".tmp", _OUT.value)
  gib = lambda n: f"{n / 2**30:7.2f}" if n else "      -"  # noqa: E731
  print(f"\n{'preset':8s} {'dtype':9s} {'attn':5s} {'N non-emb':>11s} {'tokens/s/chip':>13s} {'GFLOP/s':>9s} "
        f"{'MFU':>6s} {'plan GiB':>8s} {'used GiB':>8s}")
  for r in rows:
    print(f"{r['preset']:8s} {r['dtype']:9s} {r['attention']:5s} {r.get('non_embedding_params', 0):11,d} "
          f"{r.get('tokens_per_sec_per_chip', 0):13,.0f} {r.get('model_gflops', 0):9.1f} {r.get('mfu', 0):6.1%} "
          f"{gib(r.get('planned_peak_bytes_per_device'))} {gib(r.get('measured_peak_bytes_per_device'))}")
  if best:
    print(f"best MFU {best['mfu']:.1%} ({best['preset']}, {best['attention']})")
  if vocab and comp and mem:
    print(f"vocab 1M/10K step ratio {vocab['ratio']:.2f} (dense AdamW {vocab['dense_ratio']:.2f}); "
          f"compile 32/2 layers ratio {comp['ratio']:.2f}; eval temp memory 1M/10K ratio {mem['temp_ratio']:.2f}")
  print(f"-> {_OUT.value}")


if __name__ == "__main__":
  app.run(main)

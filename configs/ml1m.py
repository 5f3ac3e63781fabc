"""MovieLens-1M next-item prediction (the benchmark of `benchmarks/ml1m.py`), on a prepared ml-1m data set.

    python -m gpt_ads.data.movielens --dataset=ml-1m --data_dir=/work/shared/data --output=/tmp/ml1m
    gpt-ads-train --config=configs/ml1m.py --config.data.dir=/tmp/ml1m --workdir=/tmp/ml1m_run
    gpt-ads-train --config=configs/ml1m.py:features=multi --config.data.dir=/tmp/ml1m --workdir=/tmp/ml1m_multi

Argument keys: features (item: the item id only | multi: item + genre as input and predicted, plus the user's
gender / age / occupation as input-only context where the data set has them), size (a preset of
gpt_ads.config_lib.MODEL_SIZES; default: the tuned d_model 64 x 2 layers below), steps.

The recipe: SASRec's shape (d_model 64 x 2 layers, windows of up to 200 events, dropout 0.2) trained with the
EXACT softmax over the 3,416 items (an untied d -> v head), AdamW at a peak learning rate of 1e-2 with a cosine
schedule (400 warmup steps), 3,200 steps of 64 packed rows; benchmarks/ml1m.py keeps the best of the last 4
checkpoints (250 steps apart, and the last) by validation NDCG@10. Chosen on validation by H200 sweeps at the step
counts 60 CPU minutes buy, then CPU runs: the exact softmax learns more per CPU second than 512 sampled negatives
(`--config.schema.features.item.loss=sampled_softmax`), the learning rate matters most, and 64-row batches (half
the step time, twice the updates) edge out 128. Every run and figure: BUILD_NOTES, "ML-1M next-item benchmark";
the result: README Results.
The 2 layers are unrolled (`scan_layers=False`): on CPU the scan's stacked per-layer residuals (the [b, h, t, t]
attention probabilities among them) cost ~20% of the step in copies (1.68 -> 1.37 s/step on 2 idle cores).
"""

import ml_collections

from gpt_ads import config_lib
from gpt_ads.data.movielens import CONTEXT  # the user's demographics on every event: input-only (loss weight 0)

FEATURE_SETS = {"item": ("item",), "multi": ("item", "genre") + CONTEXT}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, features="item", size="", steps=3200)
  if arg.features not in FEATURE_SETS:
    raise ValueError(f"config argument features={arg.features!r}: choose one of {sorted(FEATURE_SETS)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  size = config_lib.MODEL_SIZES[arg.size] if arg.size else dict(d_model=64, num_layers=2, num_heads=2, mlp_dim=256)
  c.model = ml_collections.ConfigDict(dict(
      **size, max_len=200, dropout=0.2, dtype="float32", combine="sum", remat="none", scan_layers=False,
      vocab_pad_multiple=128, backbone="transformer",
      # "chain" (features=multi): the item first, so ranking items needs no sum over the genre or the context.
      event_factorization="independent", event_order="item", attention="xla",
      # The item head's matmul fused with its cross-entropy, 4 time steps at a time (0 = [b, t, v] logits).
      xent_chunk=4,
      # The item head's matmul in bf16 (accumulation and softmax f32): ~10% of the step on bf16 CPUs.
      head_dtype="bfloat16"))

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # required: the prepared ml-1m data set
  c.data.generated_dir = ""
  c.data.features = FEATURE_SETS[arg.features]  # the data set's features this run uses
  c.data.max_train_users = 0  # 0 = all training users; N = the first N (data-scaling runs)
  c.data.seed = 0
  c.data.num_shards = 0
  c.data.pack = True
  c.data.packing_bins = 0
  c.data.read_threads = 1
  c.data.num_workers = 0

  d = c.model.get_ref("d_model")
  c.schema = ml_collections.ConfigDict()
  c.schema.defaults = ml_collections.ConfigDict(dict(embed_dim=d, num_negatives=512, sampler="uniform", tied=True,
                                                     weight=1.0, copy_lags=0))
  c.schema.features = ml_collections.ConfigDict()
  c.schema.features.item = dict(loss="softmax")  # or "sampled_softmax" (the negatives above)
  c.schema.features.genre = dict(loss="softmax", weight=1.0)
  for name in CONTEXT:
    c.schema.features[name] = dict(loss="softmax", weight=0.0)

  c.train = ml_collections.ConfigDict(dict(
      num_steps=arg.steps, batch_size=64, learning_rate=1e-2, warmup_steps=400, lr_schedule="cosine",
      final_lr_fraction=0.02, weight_decay=0.1, b1=0.9, b2=0.98, grad_clip=1.0, grad_accum_steps=1, log_every=100,
      eval_every=0, checkpoint_every=250, keep_checkpoints=4, init_output_bias="log_prior",
      sparse_update_min_vocab=0))
  c.eval = ml_collections.ConfigDict(dict(batch_size=256, vocab_chunk=4096))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rule_set = "fsdp_tensor"
  c.sharding.rules = ()
  return c

#!/bin/bash
# The two ML-1M recipe sweeps behind configs/ml1m.py (docs/results/ml1m_next_item/gpu_sweeps.json): several
# benchmarks/ml1m.py runs at once on one GPU, each in its own process on a slice of its memory. Step counts are
# what 55-60 minutes buy on 2 CPU cores at each recipe's CPU step time.
#
#   bash benchmarks/ml1m_sweep.sh 1|2 PREPARED_ML1M_DIR OUTDIR [DEADLINE_SECONDS]
#
# PREPARED_ML1M_DIR: a data set made by benchmarks/ml1m.py (WORKDIR/data) or gpt_ads.data.movielens.
# Results: OUTDIR/<run>.json (benchmarks/ml1m.py's JSON) and OUTDIR/<run>.log; runs left at the deadline are killed.
set -u
SWEEP=$1; DATA=$(realpath "$2"); OUT=$(realpath -m "$3"); DEADLINE=${4:-900}; T0=$(date +%s)
ROOT=$(dirname "$(dirname "$(realpath "$0")")")
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 PYTHONUNBUFFERED=1
run() {  # name variant steps [--set KEY=VALUE ...]
  local name=$1 variant=$2 steps=$3; shift 3
  mkdir -p "$OUT/$name" && ln -sfn "$DATA" "$OUT/$name/data"
  python3 "$ROOT/benchmarks/ml1m.py" --data_dir=/nonexistent --workdir="$OUT/$name" --out="$OUT/$name.json" \
    --variants="$variant" --steps="$steps" --set data.num_workers=2 --set train.log_every=250 "$@" \
    > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - T0 ))s" >> "$OUT/done.txt"
}
EXACT="--set schema.features.item.loss=softmax"
SAMPLED="--set schema.features.item.loss=sampled_softmax"
if [ "$SWEEP" = 1 ]; then  # sampled vs exact, model width, learning rate (lr 2e-3 unless set)
  LR="--set train.learning_rate=0.002"
  run A_item_2300 item 2300 $SAMPLED $LR &
  run B_multi_1950 multi 1950 $SAMPLED $LR &
  run C_item_lr4e-3_2300 item 2300 $SAMPLED --set train.learning_rate=0.004 &
  run D_item_exact_1000 item 1000 $EXACT $LR &
  run E_item_d128_2300 item 2300 $SAMPLED $LR --set model.d_model=128 --set model.mlp_dim=512 &
  run F_multi_6000 multi 6000 $SAMPLED $LR &
  run G_item_exact_4000 item 4000 $EXACT $LR &
else  # the exact softmax: learning rate, batch, dropout, features, heads; only the final checkpoint is ranked
  X="$EXACT --set train.checkpoint_every=100000 --set train.keep_checkpoints=1 --set train.eval_every=0"
  run S1_exact_lr2e-3_1450 item 1450 $X --set train.learning_rate=0.002 &
  run S2_exact_lr4e-3_1450 item 1450 $X --set train.learning_rate=0.004 &
  run S3_exact_lr8e-3_1450 item 1450 $X --set train.learning_rate=0.008 &
  run S4_exact_lr4e-3_b64_2900 item 2900 $X --set train.learning_rate=0.004 --set train.batch_size=64 &
  run S5_exact_lr4e-3_drop0.1_1450 item 1450 $X --set train.learning_rate=0.004 --set model.dropout=0.1 &
  run S6_multi_exact_lr4e-3_1250 multi 1250 $X --set train.learning_rate=0.004 &
  run S7_exact_lr4e-3_1head_1650 item 1650 $X --set train.learning_rate=0.004 --set model.num_heads=1 &
  run S8_exact_lr4e-3_3000 item 3000 $X --set train.learning_rate=0.004 &
fi
while [ $(( $(date +%s) - T0 )) -lt "$DEADLINE" ] && [ -n "$(jobs -r)" ]; do sleep 10; done
[ -n "$(jobs -r)" ] && echo "deadline at $(( $(date +%s) - T0 ))s: stopping $(jobs -r | wc -l) runs" >> "$OUT/done.txt"
kill $(jobs -p) 2>/dev/null; pkill -f "$ROOT/benchmarks/ml1m.py"; wait
cat "$OUT/done.txt"

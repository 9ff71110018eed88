#!/usr/bin/env bash
# Train the two embedded models from scratch with the same data, budget and recipe.
# Both run at once on one GPU (each with its own data-loader workers), e.g.:
#   STEPS=2000 bash scripts/train_embedded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-3000}
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-8}
RUNS=${RUNS:-runs}
PY=${PY:-python}
mkdir -p "$RUNS"
common=(--steps "$STEPS" --batch-size "$BATCH" --workers "$WORKERS" --eval-every 500 --seed 0 --data-seed 0)
for model in t2t_vit_7 deit_tiny_patch16_224; do
  "$PY" -m t2t.train --model "$model" "${common[@]}" --out "$RUNS/$model" >"$RUNS/$model.out" 2>&1 &
done
wait

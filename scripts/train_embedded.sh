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
# The shipped T2T-ViT-7 was trained at attention scale 256 ** -0.5 = 0.0625 (the registry's default then;
# its card records it); QK_SCALE_T2T= (empty) trains at today's default, head_dim ** -0.5.
QK_SCALE_T2T=${QK_SCALE_T2T-0.0625}
for model in t2t_vit_7 deit_tiny_patch16_224; do
  extra=()
  if [[ $model == t2t_vit_7 && -n $QK_SCALE_T2T ]]; then extra=(--qk-scale "$QK_SCALE_T2T"); fi
  "$PY" -m t2t.train --model "$model" "${common[@]}" "${extra[@]}" --out "$RUNS/$model" >"$RUNS/$model.out" 2>&1 &
done
wait

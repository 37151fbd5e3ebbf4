#!/usr/bin/env bash
# Train the bundled default model (Learn2Synth, parametric augmenter) and its naive-SynthSeg
# baseline with the same network, budget and seed, in stages so that every stage leaves a model
# package behind (Dice against training time) and an interruption loses at most one stage.
#
#   bash benchmarks/train_default.sh METHOD RUNS_DIR [STAGE_STEPS...]
#   e.g. bash benchmarks/train_default.sh l2s-parametric /work/runs/l2s 500 1000 2000 3000 4000
#
# Each stage resumes the same trainer run folder (exact resume: weights, optimiser moments,
# augmenter, RNG state) with a larger --steps, then writes RUNS_DIR/step_NNNNN (a model package).
# InstanceNorm: without normalisation the 2D UNet sat on the all-background plateau for the
# first 500+ steps here (measured: loss flat at 1.47, no foreground predicted), with it it left at once.
# 2.5D on axial + coronal slices: sagittal slices carry no left-right cue for the 16 paired labels.
# Tuned with ixi012 ixi013 ixi014 bert; the scored subjects (ixi015 ixi033 ixi034 ixi039 vxm01)
# are never read here.
set -euo pipefail
method=$1; runs=$2; shift 2
data=${L2S_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
mkdir -p "$runs"
for steps in "$@"; do
  out=$(printf '%s/step_%05d' "$runs" "$steps")
  [ -f "$out/manifest.json" ] && continue
  resume=(); [ -d "$runs/run/checkpoint" ] && resume=(--resume)
  "$bin/l2s-train" --label-maps "$data/label_maps" --real-bids "$data/bids_real" \
    --tune-participant-label ixi012 ixi013 ixi014 bert \
    --method "$method" --ndim 2 --plane axial coronal --norm instance --loss dice+ce --voxel-size 2 --patch-size 128 --batch-size 8 \
    --steps "$steps" --warmup-steps 400 --lr 1e-3 --lr-theta 1e-2 --seed 0 \
    --eval-every 250 --checkpoint-every 250 --plugin debug --nthreads "${NTHREADS:-1}" \
    --name "l2s-default-2p5d-$method" --run-dir "$runs/run" -w "$runs/work" -o "$out" \
    "${resume[@]}" --no-report
  echo "$(date -Is) $method: $steps steps -> $out"
done

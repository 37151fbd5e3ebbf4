#!/usr/bin/env bash
# Train the bundled default model in resumable stages (the training campaign of issue 9): every
# stage leaves a model package behind (Dice against training time) and an interruption loses at
# most one stage.
#
#   bash benchmarks/train_default.sh METHOD RUNS_DIR [STAGE_STEPS...]
#   e.g. bash benchmarks/train_default.sh l2s-parametric /work/runs/campaign 1000 2000 3000
#
# Each stage resumes the same trainer run folder (exact resume: weights, optimiser moments,
# augmenter, RNG state) with a larger --steps, then writes RUNS_DIR/step_NNNNN (a model package).
# When the run folder is gone (a fresh machine) and INIT_WEIGHTS names a committed package of the
# same architecture, the run starts from its weights (Adam restarts, with the lr warm-up).
#
# Recipe (benchmarks/RESULTS.md, "Training recipe"): 2.5D on axial + coronal slices at 2 mm,
# UNet 16-32-64-128-256 with InstanceNorm, Dice + CE, batch 8 x 128^2, bf16 autocast of plain
# steps, Adam 1e-3 with a 300-step warm-up and a cosine decay over SCHEDULE_STEPS, generator
# priors in mm ("mild": SynthSeg's spatial and resolution ranges, milder bias/gamma/noise, 30%
# skull-stripped samples). The Learn2Synth phase starts at WARMUP_STEPS (plain steps before it,
# through the augmenter at its start values; the baseline keeps WARMUP_STEPS beyond its budget).
# Tuned and validated with ixi012 ixi013 ixi014 bert; the scored subjects (ixi015 ixi033 ixi034
# ixi039 vxm01) are never read here. EXTRA_ARGS (words) go to l2s-train as they are, e.g.
# "--time-budget-min 900": a stage that stops early on its budget ends the loop.
set -euo pipefail
method=$1; runs=$2; shift 2
data=${L2S_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
bin=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
mkdir -p "$runs"
for steps in "$@"; do
  out=$(printf '%s/step_%05d' "$runs" "$steps")
  if [ -f "$out/manifest.json" ]; then  # done earlier; a stage stopped by the budget ends the loop
    done_steps=$("$bin/python" -c "import json, sys; print(json.load(open(sys.argv[1]))['training']['steps'])" "$out/manifest.json")
    [ "$done_steps" -lt "$steps" ] && break
    continue
  fi
  start=(); [ -d "$runs/run/checkpoint" ] && start=(--resume)
  if [ ${#start[@]} -eq 0 ] && [ -n "${INIT_WEIGHTS:-}" ]; then start=(--init-weights "$INIT_WEIGHTS"); fi
  "$bin/l2s-train" --label-maps "$data/label_maps" --real-bids "$data/bids_real" \
    --tune-participant-label ixi012 ixi013 ixi014 bert \
    --method "$method" --ndim 2 --plane axial coronal --voxel-size 2 --patch-size 128 --batch-size 8 \
    --widths 16 32 64 128 256 --norm instance --loss dice+ce --priors mild --amp bf16 \
    --lr 1e-3 --lr-schedule cosine --lr-warmup 300 --lr-end 0.05 --schedule-steps "${SCHEDULE_STEPS:-60000}" \
    --steps "$steps" --warmup-steps "${WARMUP_STEPS:-1000000}" --lr-theta 1e-2 --seed 0 \
    --eval-every 250 --synth-val-size 16 --checkpoint-every 250 --plugin debug --nthreads "${NTHREADS:-1}" \
    --name "l2s-default-2p5d-$method" --run-dir "$runs/run" -w "$runs/work" -o "$out" \
    "${start[@]}" --no-report ${EXTRA_ARGS:-}
  done_steps=$("$bin/python" -c "import json, sys; print(json.load(open(sys.argv[1]))['training']['steps'])" "$out/manifest.json")
  echo "$(date -Is) $method: $done_steps steps -> $out"
  if [ "$done_steps" -lt "$steps" ]; then
    echo "$(date -Is) $method: time budget reached at step $done_steps"; break
  fi
done

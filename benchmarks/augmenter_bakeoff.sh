#!/usr/bin/env bash
# Does a richer Learn2Synth augmenter help on real scans? (issue 9, part B: a bake-off at equal CPU
# time). Two Learn2Synth arms start from the same model package's weights (Adam, augmenter and RNG
# restart in both; the lr is re-warmed) and train side by side, one thread each, until each has
# used MINUTES more minutes of training time: "base" tunes the paper's augmenter (noise level and
# bias field), "rich" also tunes a per-image gamma spread and blur width (l2s-train --augment noise
# bias gamma blur). Everything else is the campaign's recipe (train_default.sh): the lr restarts
# at ARM_LR (default 3e-4) and decays on the clock to its end at the budget, a meta-step every
# HYPER_EVERY-th step (default 4) from 200 steps after the start (Adam's moments settle first).
# Stage packages every STAGE steps and the last one are scored on the validation subjects only
# (record_accuracy.py --select, results/augmenter_bakeoff_<arm>.json); the scored subjects are not
# read.
#
#   bash benchmarks/augmenter_bakeoff.sh INIT_PACKAGE ARMS_DIR MINUTES [STAGE]
#   e.g. nohup nice -n 5 bash benchmarks/augmenter_bakeoff.sh /work/runs/arms/l2s/step_38000 /work/runs/aug 95 2000 &
#
# Rerunning the same command resumes both arms and rescoring skips the stages already scored.
set -euo pipefail
init=$1; arms=$2; minutes=$3; stage=${4:-2000}
arm_lr=${ARM_LR:-3e-4}; hyper_every=${HYPER_EVERY:-4}
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"
read -r start start_min < <("$py" - "$init" <<'PY'
import json, sys
from pathlib import Path
pkg = Path(sys.argv[1])
step = int(json.loads((pkg / "manifest.json").read_text())["training"]["steps"])
times = [json.loads(l).get("time", 0.0) for l in open(pkg / "metrics.jsonl") if l.strip()]
print(step, round(max(times or [0.0]) / 60, 3))
PY
)
budget=$("$py" -c "print(round($start_min + $minutes, 1))")
stages=$(seq $((start + stage)) "$stage" $((start + 200000)))
for arm in base rich; do
  parts=$([ "$arm" = rich ] && echo "--augment noise bias gamma blur" || echo "")
  INIT_WEIGHTS=$init WARMUP_STEPS=$((start + 200)) NTHREADS=1 \
    EXTRA_ARGS="--time-budget-min $budget --decay-from-min $start_min --lr $arm_lr --hyper-every $hyper_every $parts" \
    bash "$here/train_default.sh" l2s-parametric "$arms/$arm" $stages > "$arms/$arm.log" 2>&1 &
done
wait
for arm in base rich; do
  OMP_NUM_THREADS=2 "$py" "$here/record_accuracy.py" --select "$arms/$arm" --threads 2 \
    --out "$here/results/augmenter_bakeoff_$arm.json"
  "$py" - "$here" "$here/results/augmenter_bakeoff_$arm.json" "$init" "$start" "$start_min" "$minutes" \
    "$arm_lr" "$hyper_every" "$arm" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from common import write_json
out, init, step, start_min, minutes, lr, hyper, arm = sys.argv[2:]
rec = json.load(open(out))
rec["fork"] = {"init": init, "step": int(step), "time_s": 60 * float(start_min), "minutes": float(minutes),
               "lr": float(lr), "hyper_every": int(hyper),
               "augment": ["noise", "bias", "gamma", "blur"] if arm == "rich" else ["noise", "bias"]}
write_json(Path(out), rec)
PY
done

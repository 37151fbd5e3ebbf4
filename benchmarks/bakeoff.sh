#!/usr/bin/env bash
# A recipe bake-off at equal CPU time (issue 9, part B): two or more arms train side by side, one
# thread each, until each has used MINUTES more minutes of training time, from the same start:
# either one model package's weights (INIT_PACKAGE; Adam, augmenter and RNG restart in every arm,
# the lr is re-warmed; the campaign continues) or from scratch with the same seed (INIT_PACKAGE
# "none"). Each arm is the campaign's recipe (train_default.sh: 2.5D, axial + coronal slices at
# 2 mm, METHOD default l2s-parametric from a package and synthseg from scratch; Learn2Synth with a
# meta-step every HYPER_EVERY-th step, default 4, from 200 steps after the start so that Adam's
# moments settle first; lr restarted at ARM_LR, default 3e-4, and decayed on the clock to its end
# at the budget) plus that arm's own l2s-train options, which override the recipe's (e.g. "--ndim 3
# --plane axial --voxel-size 3 --patch-size 64 --batch-size 1" for a 3D arm). Stage packages
# every STAGE steps and the last one are scored on the validation subjects only
# (record_accuracy.py --select, results/bakeoff_<NAME>_<arm>.json; summarise.py renders them);
# the scored subjects are not read.
#
#   bash benchmarks/bakeoff.sh NAME INIT_PACKAGE|none RUNS_DIR MINUTES STAGE ARM "OPTIONS" ARM "OPTIONS" ...
#   e.g. (the augmenter bake-off: the paper's noise and bias against noise, bias, gamma and blur)
#   nohup nice -n 5 bash benchmarks/bakeoff.sh augmenter /work/runs/arms/l2s/step_38000 /work/runs/aug \
#       95 2000 base "" rich "--augment noise bias gamma blur" &
#   (3D at 3 mm against 2.5D at 2 mm, from scratch; validation during training off in both arms:
#   it counts in the training time, and a step-based interval would charge the cheaper 2.5D steps
#   more often)
#   ARM_LR=1e-3 nohup nice -n 5 bash benchmarks/bakeoff.sh 3d none /work/runs/3d 45 1500 \
#       2p5d "--eval-every 100000" \
#       3d "--ndim 3 --plane axial --voxel-size 3 --patch-size 64 --batch-size 1 --eval-every 100000" &
#   To extend a finished bake-off, delete each arm's last (budget-stopped) stage folder and its
#   entry in the results, then rerun with a larger MINUTES.
#
# Rerunning the same command resumes every arm; rescoring skips the stages already scored.
set -euo pipefail
name=$1; init=$2; runs=$3; minutes=$4; stage=$5; shift 5
arm_lr=${ARM_LR:-3e-4}; hyper_every=${HYPER_EVERY:-4}
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"
declare -A options=()
arms=()
while [ $# -ge 2 ]; do arms+=("$1"); options[$1]=$2; shift 2; done
[ ${#arms[@]} -ge 2 ] && [ $# -eq 0 ] || { echo "bakeoff.sh: give at least two ARM \"OPTIONS\" pairs" >&2; exit 2; }
if [ "$init" = none ]; then
  start=0; start_min=0; method=${METHOD:-synthseg}
else
  method=${METHOD:-l2s-parametric}
  read -r start start_min < <("$py" - "$init" <<'PY'
import json, sys
from pathlib import Path
pkg = Path(sys.argv[1])
step = int(json.loads((pkg / "manifest.json").read_text())["training"]["steps"])
times = [json.loads(l).get("time", 0.0) for l in open(pkg / "metrics.jsonl") if l.strip()]
print(step, round(max(times or [0.0]) / 60, 3))
PY
  )
fi
budget=$("$py" -c "print(round($start_min + $minutes, 1))")
stages=$(seq $((start + stage)) "$stage" $((start + 200000)))
mkdir -p "$runs"
for arm in "${arms[@]}"; do
  INIT_WEIGHTS=$([ "$init" = none ] || echo "$init") WARMUP_STEPS=$((start + 200)) NTHREADS=1 \
    EXTRA_ARGS="--time-budget-min $budget --decay-from-min $start_min --lr $arm_lr --hyper-every $hyper_every ${options[$arm]}" \
    bash "$here/train_default.sh" "$method" "$runs/$arm" $stages > "$runs/$arm.log" 2>&1 &
done
wait
for arm in "${arms[@]}"; do
  out="$here/results/bakeoff_${name}_$arm.json"
  OMP_NUM_THREADS=2 "$py" "$here/record_accuracy.py" --select "$runs/$arm" --threads 2 --out "$out"
  "$py" - "$here" "$out" "$init" "$start" "$start_min" "$minutes" "$arm_lr" "$hyper_every" "$name" "$arm" \
    "${options[$arm]}" "$method" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from common import write_json
out, init, step, start_min, minutes, lr, hyper, name, arm, options, method = sys.argv[2:]
rec = json.load(open(out))
rec["bakeoff"] = {"name": name, "arm": arm, "options": options, "init": "" if init == "none" else init, "step": int(step),
                  "time_s": 60 * float(start_min), "minutes": float(minutes), "lr": float(lr),
                  "hyper_every": int(hyper), "method": method}
write_json(Path(out), rec)
PY
done

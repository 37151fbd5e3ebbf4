#!/usr/bin/env bash
# Learn2Synth against the plain SynthSeg baseline at equal CPU time (issue 9, part C): both arms
# fork the campaign's run folder at its last checkpoint (same weights, Adam moments, RNG and seed),
# then train side by side with one thread each until each has used MINUTES more minutes of
# training time (l2s-train --time-budget-min, cumulative from the fork): the Learn2Synth arm with
# its augmenter tuned by hypergradients on ixi012 ixi013 ixi014 bert from the fork step on
# (WARMUP_STEPS = fork step), the baseline with plain synthetic steps (WARMUP_STEPS beyond any
# budget). The lr of both arms restarts at ARM_LR (default 5e-4) and decays on the clock
# (--decay-from-min at the fork, cosine to its end at the budget), so each arm anneals by the end
# of its budget however costly its steps: a step-count schedule would leave the slower Learn2Synth
# arm at a high lr when its time runs out. HYPER_EVERY=K (default 1, the paper) gives the
# Learn2Synth arm a meta-step every K-th step only (l2s-train --hyper-every, a named deviation:
# a meta-step costs about 7 plain steps on CPU). Stage packages every STAGE steps and the last one, at
# the budget, are scored on the validation subjects only (record_accuracy.py --select,
# results/l2s_vs_plain_<arm>.json); the scored subjects are not read.
#
#   bash benchmarks/l2s_vs_plain.sh CAMPAIGN_DIR ARMS_DIR MINUTES [STAGE]
#   e.g. nohup nice -n 2 bash benchmarks/l2s_vs_plain.sh /work/runs/campaign /work/runs/arms 600 &
#
# Rerunning the same command resumes both arms (the fork point and budget are kept in
# ARMS_DIR/fork.json). Recipe variables of train_default.sh pass through.
set -euo pipefail
campaign=$1; arms=$2; minutes=$3; stage=${4:-500}
arm_lr=${ARM_LR:-5e-4}; hyper_every=${HYPER_EVERY:-1}
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../.venv/bin/python"
mkdir -p "$arms"
if [ ! -f "$arms/fork.json" ]; then
  for arm in l2s plain; do
    rm -rf "$arms/$arm"; mkdir -p "$arms/$arm"; cp -r "$campaign/run" "$arms/$arm/run"
  done
  "$py" - "$arms" <<'PY'
import json, sys
from pathlib import Path
arms = Path(sys.argv[1])
step = int(json.loads((arms / "l2s/run/checkpoint/state.safetensors.json").read_text())["metadata"]["step"])
records = [json.loads(l) for l in open(arms / "l2s/run/metrics.jsonl") if l.strip()]
fork_time = max([r.get("time", 0.0) for r in records if r["step"] < step] or [0.0])  # the log may run past the checkpoint
(arms / "fork.json").write_text(json.dumps({"step": step, "time_s": fork_time}) + "\n")
PY
fi
read -r fork_step fork_min < <("$py" -c "import json, sys; f = json.load(open(sys.argv[1])); print(f['step'], f['time_s'] / 60)" "$arms/fork.json")
budget=$("$py" -c "print(round($fork_min + $minutes, 3))")
stages=$(seq $((fork_step + stage)) "$stage" $((fork_step + 200000)))
for arm in l2s plain; do
  warmup=$([ "$arm" = l2s ] && echo "$fork_step" || echo 100000000)
  hyper=$([ "$arm" = l2s ] && echo "--hyper-every $hyper_every" || echo "")
  WARMUP_STEPS=$warmup NTHREADS=1 \
    EXTRA_ARGS="--time-budget-min $budget --decay-from-min $fork_min --lr $arm_lr $hyper" \
    bash "$here/train_default.sh" l2s-parametric "$arms/$arm" $stages > "$arms/$arm.log" 2>&1 &
done
wait
for arm in l2s plain; do
  OMP_NUM_THREADS=2 "$py" "$here/record_accuracy.py" --select "$arms/$arm" --threads 2 \
    --out "$here/results/l2s_vs_plain_$arm.json"
  "$py" - "$here" "$arms/fork.json" "$here/results/l2s_vs_plain_$arm.json" "$minutes" "$arm_lr" \
    "$hyper_every" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
from common import write_json
fork, out, minutes, lr, hyper = sys.argv[2:]
rec = json.load(open(out))
rec["fork"] = {**json.load(open(fork)), "minutes": float(minutes), "lr": float(lr), "hyper_every": int(hyper)}
write_json(__import__("pathlib").Path(out), rec)
PY
done

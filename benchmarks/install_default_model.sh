#!/usr/bin/env bash
# Install a trained package (from benchmarks/train_default.sh) as the bundled default model:
# writes its training report, stores the weights in float16 (half the size in git; the network
# runs in float32, the weights are cast on load), copies manifest, curves, examples and report
# into l2s_pipelines/models/default (the new folder is built beside it, then swapped in), turns
# on the mirror test-time augmentation (inference.flip_lr), and records its measured accuracy in
# the manifest (benchmarks/record_accuracy.py --record).
#   bash benchmarks/install_default_model.sh /work/runs/campaign/step_10000
set -euo pipefail
src=$1
root=$(cd "$(dirname "$0")/.." && pwd)
dst="${DST:-$root/l2s_pipelines/models/default}"
py="$root/.venv/bin/python"
"$py" -c "import sys; from l2s_pipelines.bids_app.training_report import write_training_report as w; print(w(sys.argv[1]))" "$src"
rm -rf "$dst.new" && mkdir -p "$dst.new/figures"
"$py" - "$src" "$dst.new" <<'PY'
import sys
from l2s_pipelines.io.checkpoint import load_model_package, save_model_package
model, manifest = load_model_package(sys.argv[1])
manifest["weights_storage"] = "float16 (cast to float32 on load)"
# mirror test-time augmentation (left-right flip, labels swapped): +0.011 validation Dice at
# stage 17000 (0.617 -> 0.628 on ixi012/013/014/bert), about 1.6x the prediction time
manifest["inference"]["flip_lr"] = True
save_model_package(sys.argv[2], model.half(), manifest)
PY
cp "$src/training_report.html" "$dst.new/"
# the curves, thinned for git: every 25th step and every evaluated step (the report above was
# drawn from the full file in the run folder)
"$py" -c "
import json, sys
keep = [l for l in open(sys.argv[1]) if l.strip() and ((r := json.loads(l))['step'] % 25 == 24
        or any(k.endswith('val_dice') for k in r))]
open(sys.argv[2], 'w').writelines(keep)" "$src/metrics.jsonl" "$dst.new/metrics.jsonl"
cp "$src"/figures/*.png "$dst.new/figures/"
"$py" "$root/benchmarks/record_accuracy.py" --record "$dst.new" --threads "${NTHREADS:-1}"
rm -rf "$dst.old"; [ -d "$dst" ] && mv "$dst" "$dst.old"
mv "$dst.new" "$dst" && rm -rf "$dst.old"
du -sh "$dst"

#!/usr/bin/env bash
# Install a trained package (from benchmarks/train_default.sh) as the bundled default model:
# writes its training report, then copies weights, manifest, curves and report into
# l2s_pipelines/models/default (weights first, each file renamed into place).
#   bash benchmarks/install_default_model.sh /work/runs/l2s-parametric/step_02000
set -euo pipefail
src=$1
root=$(cd "$(dirname "$0")/.." && pwd)
dst="$root/l2s_pipelines/models/default"
"$root/.venv/bin/python" -c "import sys; from l2s_pipelines.bids_app.training_report import write_training_report as w; print(w(sys.argv[1]))" "$src"
"$root/.venv/bin/python" -c "import sys; from l2s_pipelines.io.checkpoint import load_model_package as l; l(sys.argv[1])" "$src"
rm -rf "$dst.new" && mkdir -p "$dst.new/figures"
cp "$src/model.safetensors" "$src/manifest.json" "$src/metrics.jsonl" "$src/training_report.html" "$dst.new/"
cp "$src"/figures/*.png "$dst.new/figures/"
rm -rf "$dst.old"; [ -d "$dst" ] && mv "$dst" "$dst.old"
mv "$dst.new" "$dst" && rm -rf "$dst.old"
du -sh "$dst"

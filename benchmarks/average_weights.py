"""Average the weights of model packages of one architecture into a new package ("model soup").

Packages forked from the same weights (stages of one run, or arms forked from one checkpoint)
lie in one basin of the loss, and the mean of their weights often segments better than each.
The network has no running statistics (InstanceNorm), so the average is taken tensor by tensor,
in float32. The new package keeps the manifest, curves, examples and figures of the LAST package
given, and records the sources and their mean in ``training.weights_averaged_from``; its
``training.steps`` stays the last package's (its description says so).

    .venv/bin/python benchmarks/average_weights.py RUN/step_44000 RUN/step_46000 -o RUN/soup_44_46

Scored like any stage package (``record_accuracy.py --select`` on a folder holding it):
validation subjects only, never the scored ones.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from l2s_pipelines.io.checkpoint import load_model_package, save_model_package

COPIED = ("metrics.jsonl", "examples.npz", "figures")


def average_packages(sources: list[Path], out: Path) -> Path:
    """Write the weight average of ``sources`` (same architecture and labels) to ``out``.

    Raises ValueError naming the first package whose architecture or labels differ from the
    first one's. Returns ``out``."""
    if len(sources) < 2:
        raise ValueError("give at least two packages to average")
    models, manifests = zip(*(load_model_package(s) for s in sources))
    for src, man in zip(sources[1:], manifests[1:]):
        for key in ("architecture", "labels"):
            if man[key] != manifests[0][key]:
                raise ValueError(f"{src}: its {key} differs from that of {sources[0]}; cannot average")
    states = [m.state_dict() for m in models]
    mean = {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}
    model = models[-1]
    model.load_state_dict({k: v.to(states[-1][k].dtype) for k, v in mean.items()})
    manifest = dict(manifests[-1])
    manifest["training"] = dict(manifest["training"])
    manifest["training"]["weights_averaged_from"] = [
        {"package": str(s), "name": m["name"], "steps": m["training"]["steps"],
         "sha256": m["weights"]["sha256"]} for s, m in zip(sources, manifests)]
    manifest["description"] = (f"{manifest.get('description', '').rstrip('.')}. Weights: the mean of "
                               f"{len(sources)} packages (steps "
                               f"{', '.join(str(m['training']['steps']) for m in manifests)}); "
                               f"training.steps is that of the last one.")
    save_model_package(out, model, manifest)
    for name in COPIED:
        src = sources[-1] / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, out / name)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        print(average_packages(args.packages, args.output))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

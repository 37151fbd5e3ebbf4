"""``pip install .`` (a wheel) carries the one import root, the mapped sub-packages, the label
table, the bundled model and the console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("l2s_pipelines-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"l2s_pipelines"}, f"only one import root may be installed, got {sorted(tops)}"
    for required in ("l2s_pipelines/workflows/participant.py", "l2s_pipelines/bids_app/cli.py",
                     "l2s_pipelines/bids_app/segment_cli.py", "l2s_pipelines/workflows/nipype_interface.py",
                     "l2s_pipelines/data/synthseg2_labels.tsv",
                     "l2s_pipelines/models/default/manifest.json",
                     "l2s_pipelines/models/default/model.safetensors"):
        assert required in names, f"{required} missing from {wheel.name}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("l2s-bids", "l2s-train", "l2s-demo", "l2s-segment"):
        assert f"{script} = l2s_pipelines." in text

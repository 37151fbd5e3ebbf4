"""Layers import only downwards: bids_app -> workflows -> l2s_pipelines (core).

The core library knows nothing of Pydra or BIDS; the workflows know nothing of the BIDS App."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "l2s_pipelines": ("l2s_pipelines.workflows", "l2s_pipelines.bids_app", "pydra", "bids", "nipype",
                      "templateflow"),
    "workflows": ("l2s_pipelines.bids_app",),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_bids_driver_modules_import_neither_torch_nor_matplotlib():
    """The l2s-bids driver process (options, queries, derivatives, reports, the workflow
    factories and the run loop) leaves torch and matplotlib to the worker processes that need
    them: each would add about a second to every run, a no-op rerun included. So does the
    l2s-train driver (its options and checks come before any training task)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import l2s_pipelines.bids_app.run, l2s_pipelines.bids_app.derivatives, l2s_pipelines.bids_app.report\n"
            "import l2s_pipelines.bids_app.queries, l2s_pipelines.bids_app.runlog\n"
            "import l2s_pipelines.workflows.participant, l2s_pipelines.workflows.execution\n"
            "import l2s_pipelines.bids_app.train_cli, l2s_pipelines.bids_app.train_package\n"
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_check_and_measure_tasks_run_without_torch(tmp_path):
    """Only the segmentation task imports torch (about a second per worker process): the image
    check runs beside the segmentation and the measures after it, in other workers, so a torch
    import there would add to every image's time."""
    import subprocess
    import sys

    code = """
import json, sys
from pathlib import Path
import nibabel as nib, numpy as np
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.workflows.result_tasks import MeasureSegmentation
from l2s_pipelines.workflows.tasks import CheckImage
d = Path(sys.argv[1])
nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 12, 12), dtype=np.float32), np.eye(4)), d / "t1.nii.gz")
table = LabelTable.default()
dseg = np.zeros((12, 12, 12), np.int16)
dseg[3:9, 3:9, 3:9] = table.values[1]
(d / "seg").mkdir()
nib.save(nib.Nifti1Image(dseg, np.eye(4)), d / "seg" / "dseg.nii.gz")
(d / "seg" / "segmentation.json").write_text(json.dumps({"labels": table.to_dict(), "soft_sums": [0.0] * len(table),
                                                        "confidence_sum": 0.0, "confidence_count": 0}))
checked = CheckImage(source=str(d / "t1.nii.gz"), reference="", model_dir="", fingerprint="")(
    cache_root=d / "work", worker="debug")
measured = MeasureSegmentation(source=checked.source, seg_dir=str(d / "seg"))(cache_root=d / "work", worker="debug")
volumes = (Path(measured.out_dir) / "volumes.tsv").read_text().splitlines()
print(json.dumps({"torch": "torch" in sys.modules, "volume_rows": len(volumes) - 1}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    from l2s_pipelines.labels import LabelTable

    assert result == {"torch": False, "volume_rows": len(LabelTable.default())}

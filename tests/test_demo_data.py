"""The demo dataset builder writes a valid BIDS dataset from nilearn's bundled template."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from l2s_pipelines.bids_app.demo import build_demo_dataset, vary_image

VALIDATOR = shutil.which("bids-validator-deno") or str(Path(__file__).resolve().parents[1] / ".venv/bin/bids-validator-deno")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "rawdata", n_subjects=2, resolution=2)


def test_demo_layout_and_metadata(demo):
    from bids import BIDSLayout

    layout = BIDSLayout(str(demo), validate=True)
    files = layout.get(suffix="T1w", extension=".nii.gz", return_type="filename")
    assert sorted(Path(f).name for f in files) == ["sub-01_ses-1_T1w.nii.gz", "sub-01_ses-2_T1w.nii.gz",
                                                   "sub-02_T1w.nii.gz"]
    assert layout.get_subjects() == ["01", "02"] and sorted(layout.get_sessions()) == ["1", "2"]
    text = (demo / "dataset_description.json").read_text() + (demo / "README").read_text()
    assert "MNI152NLin2009cAsym" not in text and "symmetric" in text
    assert (demo / "participants.tsv").read_text().splitlines()[0].startswith("participant_id")
    data = [np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in sorted(files)]
    assert all(d.ndim == 3 and np.isfinite(d).all() and d.max() > 0 for d in data)
    assert not np.allclose(data[0], data[1]) and not np.allclose(data[1], data[2])
    recipe = json.loads((demo / "sub-02/anat/sub-02_T1w.json").read_text())["L2SDemoRecipe"]
    assert set(recipe) == {"rotation_deg", "gamma", "scale", "bias_coefficients", "noise_sd"}


def test_variation_is_reproducible_per_seed():
    base = np.zeros((20, 22, 18), np.float32)
    base[5:15, 6:16, 4:14] = 1.0
    a, ra = vary_image(base, np.random.default_rng(3))
    b, rb = vary_image(base, np.random.default_rng(3))
    c, _ = vary_image(base, np.random.default_rng(4))
    assert ra == rb and np.array_equal(a, b) and not np.allclose(a, c)
    assert max(abs(x) for x in ra["rotation_deg"]) <= 6.0


@pytest.mark.skipif(not Path(VALIDATOR).exists(), reason="bids-validator-deno not installed")
def test_demo_dataset_passes_bids_validator(demo):
    proc = subprocess.run([VALIDATOR, "--datasetTypes", "raw", "--format", "json", str(demo)],
                          capture_output=True, text=True, timeout=120)
    errors = [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []

"""Two real subjects of ``../shared/data/bids_real`` (read in place, nothing copied) with their
reference labels: the participant level finds the reference derivatives by itself and writes a
Dice table with values in [0, 1]. The network is the tiny untrained test model, so the values
say nothing about accuracy; this checks the data path on real headers, grids and label maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read_summary, run_cli

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "bids_real"
SUBJECTS = ("ixi015", "ixi033")

pytestmark = pytest.mark.skipif(not (REAL / "dataset_description.json").is_file(), reason=f"{REAL} not present")


def test_two_real_subjects_with_dice(model_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(REAL, out, "participant", "--participant-label", *SUBJECTS, "--model", model_dir,
                   "-w", tmp_path / "work", "--nprocs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_summary(out)
    assert [(r["subject"], r["status"]) for r in rows] == [(s, "ok") for s in SUBJECTS]
    for sub in SUBJECTS:
        lines = (out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-dice_stats.tsv").read_text().splitlines()
        head = lines[0].split("\t")
        assert {"index", "name", "dice", "volume_pred_mm3", "volume_ref_mm3"} <= set(head)
        dice = [r.split("\t")[head.index("dice")] for r in lines[1:]]
        assert len(dice) == 33
        scored = [float(d) for d in dice if d != "n/a"]
        assert scored and all(0.0 <= d <= 1.0 for d in scored)
        brain = [float(r.split("\t")[head.index("volume_ref_mm3")]) for r in lines[1:]
                 if r.split("\t")[head.index("index")] != "0"]
        assert 5e5 < sum(brain) < 3e6  # the reference brain labels were read (mm^3)

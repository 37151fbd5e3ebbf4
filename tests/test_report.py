"""Subject HTML report and report figures; the report loads in headless Chromium without errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from derivative_fixtures import MANIFEST, make_bids, make_result_dir
from l2s_pipelines.bids_app import derivatives as D
from l2s_pipelines.bids_app.report import collect_images, write_subject_report
from l2s_pipelines.errors import InputError
from l2s_pipelines.workflows.figures import plot_segmentation_mosaics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture()
def outputs(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "out"
    D.write_dataset_description(out, bids_dir=bids, model_manifest=MANIFEST)
    for i, sub in enumerate(("01", "02")):
        src = bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"
        res = make_result_dir(tmp_path / "work" / sub, src, seed=i, used_for_tuning=(i == 0),
                              with_dice=True, flagged=(i == 1))
        D.publish_image_results(res, out, entities={"subject": sub}, source_file=src, save_probseg=False)
    return out, bids


def test_mosaics_show_label_colours_and_contours(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    src = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    res = make_result_dir(tmp_path / "work", src, seed=0)
    paths = plot_segmentation_mosaics(src, res / "dseg.nii.gz", {"labels": [
        {"index": 17, "name": "Left-Hippocampus", "color": "#dcd814"},
        {"index": 4, "name": "Left-Lateral-Ventricle", "color": "#781286"}]}, tmp_path / "fig")
    assert [Path(p).name for p in paths] == ["mosaic_sagittal.png", "mosaic_coronal.png", "mosaic_axial.png"]
    coronal = np.asarray(Image.open(paths[1]).convert("RGB")).reshape(-1, 3)
    # contours are drawn opaque in the label colour: exact colour pixels must exist
    assert (coronal == [0xDC, 0xD8, 0x14]).all(axis=1).any()
    assert (coronal == [0x78, 0x12, 0x86]).all(axis=1).any()
    # a label map on another grid is refused
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), np.eye(4)), tmp_path / "small.nii.gz")
    with pytest.raises(InputError, match="grid"):
        plot_segmentation_mosaics(src, tmp_path / "small.nii.gz", {"labels": []}, tmp_path / "fig2")


def test_report_content_from_derivatives_alone(outputs):
    out, _ = outputs
    err = {"input": "sub-01/anat/sub-01_run-2_T1w.nii.gz", "error": "InputError: <b>4D</b> image"}
    report = write_subject_report(out, "sub-01", errors=[err])
    text = report.read_text()
    assert report == out / "sub-01.html"
    for needed in ("Volumes", "Dice against reference labels", "QC flags", "Errors (1)",
                   "arXiv:2411.16719", "SynthSeg", "Pydra", MANIFEST["weights"]["sha256"],
                   "Used to tune the model", "sum of non-background labels",
                   "resampled to 1 mm"):
        assert needed in text, needed
    assert "&lt;b&gt;4D&lt;/b&gt;" in text and "<b>4D</b>" not in text
    # every referenced image exists (relative paths), nothing is loaded from the network
    sources = re.findall(r'src="([^"]+)"', text)
    assert len(sources) == 3 and all((out / s).is_file() for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', text)
    other = write_subject_report(out, "02").read_text()
    assert "Used to tune the model" not in other and "held out" in other
    assert "1 of 2 checks flagged" in other


def test_report_requires_derivatives_or_errors(tmp_path):
    with pytest.raises(InputError, match="sub-09"):
        write_subject_report(tmp_path, "09")
    html = write_subject_report(tmp_path, "09", errors=["sub-09: no T1w found"]).read_text()
    assert "0 image(s) segmented, 1 error(s)" in html


def test_collect_images_reads_sessions(tmp_path, outputs):
    out, bids = outputs
    src = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    res = make_result_dir(tmp_path / "work3", src, seed=2, with_dice=False)
    D.publish_image_results(res, out, entities={"subject": "01", "session": "b"}, source_file=src,
                            save_probseg=False)
    images = collect_images(out, "01")
    assert [i.name for i in images] == ["sub-01", "sub-01_ses-b"]
    assert images[1].entities == {"sub": "01", "ses": "b"} and images[1].dice is None


def _chromium_console(html: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """Load ``html`` headless; return console lines logged by the page and a screenshot path."""
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,2000", f"--screenshot={shot}", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line], shot


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_loads_in_headless_chromium_without_console_errors(outputs, tmp_path):
    out, _ = outputs
    report = write_subject_report(out, "01")
    console, shot = _chromium_console(report, tmp_path / "a")
    assert console == []
    assert Image.open(shot).size == (1280, 2000)
    # control: a page with a script error is caught by the same check
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    console, _ = _chromium_console(bad, tmp_path / "b")
    assert any("undefinedFunction" in line for line in console)

"""Subject HTML report and report figures; the report loads in headless Chromium without errors."""

from __future__ import annotations

import html as htmllib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derivative_fixtures import MANIFEST, label_dict, make_bids, make_result_dir
from l2s_pipelines import metrics
from l2s_pipelines.bids_app import derivatives as D
from l2s_pipelines.bids_app.group import run_group
from l2s_pipelines.bids_app.report import collect_images, qc_status, write_subject_report
from l2s_pipelines.errors import InputError
from l2s_pipelines.workflows import figures as F
from l2s_pipelines.workflows.figures import plot_segmentation_mosaics



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
        {"index": 0, "name": "background", "color": "#000000"},
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


def _colour_pixels(png, colour: str) -> np.ndarray:
    """``(row, column)`` of the pixels of ``png`` exactly ``colour``."""
    rgb = np.asarray(Image.open(png).convert("RGB"))
    return np.argwhere((rgb == [int(colour[i:i + 2], 16) for i in (1, 3, 5)]).all(axis=2))


def test_display_colours_keep_freesurfer_colours_but_not_grey_ones():
    assert F.display_colour("#CD3E4E") == "#cd3e4e" and F.display_colour("#dcd814") == "#dcd814"
    assert F.display_colour("#f5f5f5") == F.WHITE_MATTER_DISPLAY  # cerebral white matter
    assert F.display_colour("#3c3c3c") == F.DARK_GREY_DISPLAY  # CSF
    assert len({F.WHITE_MATTER_DISPLAY, F.DARK_GREY_DISPLAY, F.DISAGREEMENT_COLOUR}) == 3


def test_mosaics_left_is_left_white_matter_visible_and_coordinates_from_affine(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    src = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    res = make_result_dir(tmp_path / "work", src, seed=0, with_probseg=False)
    labels = label_dict()
    for row in labels["labels"]:  # left and right hippocampus told apart by colour
        row["color"] = {17: "#ffff00", 53: "#00ff00"}.get(row["index"], row["color"])
    paths = plot_segmentation_mosaics(src, res / "dseg.nii.gz", labels, tmp_path / "fig")
    for png in paths[1:3]:  # coronal and axial: in every row, the leftmost hippocampus pixel is the left one
        left, right = (_colour_pixels(png, c) for c in ("#ffff00", "#00ff00"))
        rows = set(left[:, 0]) & set(right[:, 0])
        assert len(rows) > 5
        for r in rows:
            assert left[left[:, 0] == r, 1].min() < right[right[:, 0] == r, 1].min()
            assert left[left[:, 0] == r, 1].max() < right[right[:, 0] == r, 1].max()
    # white matter (FreeSurfer #f5f5f5) is drawn in its display colour, not near-white
    assert len(_colour_pixels(paths[1], F.WHITE_MATTER_DISPLAY)) > 100
    # slice coordinates are world coordinates (mm) of the voxels shown
    shifted = nib.load(src)
    affine = shifted.affine.copy()
    affine[:3, 3] = [-30.0, -40.0, -20.0]
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), affine), tmp_path / "shifted.nii.gz")
    vols = F._Volumes(tmp_path / "shifted.nii.gz", res / "dseg.nii.gz", labels)
    for plane, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        slices, coords = vols.cuts(plane, 4)
        assert np.allclose(coords, vols.affine[axis, 3] + 2.0 * np.asarray(slices))
        assert vols.affine[axis, 3] >= affine[axis, 3]  # cropped, origin moved inwards


def test_disagreement_figure_shows_only_where_reference_differs(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    src = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    res = make_result_dir(tmp_path / "work", src, seed=0, with_probseg=False)
    dseg = nib.load(res / "dseg.nii.gz")
    lab = np.asarray(dseg.dataobj)
    nib.save(dseg, tmp_path / "same.nii.gz")
    other = lab.copy()
    other[other == 17] = 2        # reference: left hippocampus is white matter there
    other[:, :, :2] = 255          # ignored voxels never count as disagreement
    nib.save(nib.Nifti1Image(other, dseg.affine), tmp_path / "other.nii.gz")
    same = plot_segmentation_mosaics(src, dseg.get_filename(), label_dict(), tmp_path / "a",
                                     reference_path=tmp_path / "same.nii.gz")
    diff = plot_segmentation_mosaics(src, dseg.get_filename(), label_dict(), tmp_path / "b",
                                     reference_path=tmp_path / "other.nii.gz")
    assert [Path(p).name for p in diff][3:] == ["mosaic_disagreement.png"]
    def magenta(png):  # DISAGREEMENT_COLOUR at 80% over the grey image
        rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 2] > 200) & (rgb[..., 1] < 60)).sum())

    assert F.DISAGREEMENT_COLOUR == "#ff00ff"
    assert magenta(same[3]) == 0 and magenta(diff[3]) > 20
    vols = F._Volumes(src, dseg.get_filename(), label_dict(), tmp_path / "other.nii.gz")
    expected = (lab == 17).sum() / ((lab > 0) & (other != 255)).sum()
    assert F.disagreement_fraction(vols) == pytest.approx(expected, rel=0.05)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Three subjects: 01 tuning with a reference figure and a background Dice row, 02 held out
    with a QC flag and a check not run, 03 without reference; then the group level."""
    tmp = tmp_path_factory.mktemp("reports")
    bids = make_bids(tmp / "bids", subjects=("01", "02", "03"))
    out = tmp / "out"
    D.write_dataset_description(out, bids_dir=bids, model_manifest=MANIFEST)
    for i, sub in enumerate(("01", "02", "03")):
        src = bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"
        res = make_result_dir(tmp / "work" / sub, src, seed=i, used_for_tuning=(i == 0), with_dice=(i < 2),
                              with_probseg=False, flagged=(i == 1))
        if i == 0:
            dice = (res / "dice.tsv").read_text().splitlines()
            (res / "dice.tsv").write_text("\n".join([dice[0], "0\tbackground\t0.999\t1\t1\t0"] + dice[1:]) + "\n")
            ref = np.asarray(nib.load(res / "dseg.nii.gz").dataobj).copy()
            ref[ref == 17] = 2
            nib.save(nib.Nifti1Image(ref, nib.load(src).affine), tmp / "ref.nii.gz")
            plot_segmentation_mosaics(src, res / "dseg.nii.gz", label_dict(), res / "figures",
                                      reference_path=tmp / "ref.nii.gz")
        if i == 1:
            qc = json.loads((res / "qc.json").read_text())
            qc["flags"].append({"name": "fragmented_Left-Thalamus", "value": None, "threshold": 0.9,
                                "flagged": False, "description": "structure absent"})
            (res / "qc.json").write_text(json.dumps(qc))
        D.publish_image_results(res, out, entities={"subject": sub}, source_file=src, save_probseg=False)
    assert run_group(out) == 0
    return out


def test_legend_lists_the_labels_present_in_display_colours(reports):
    text = (reports / "sub-01.html").read_text()
    legend = re.search(r'<div class="legend".*?</div>', text, re.S).group(0)
    names = re.findall(r"</span>([A-Za-z0-9-]+) <small>", legend)
    volumes = pd.read_csv(reports / "sub-01/anat/sub-01_desc-volumes_morph.tsv", sep="\t")
    present = volumes[(volumes["index"] != 0) & (volumes["volume_hard_mm3"] > 0)]["name"].tolist()
    assert names == present and "Left-Thalamus" not in names and len(names) == 8
    assert f"background:{F.WHITE_MATTER_DISPLAY}" in legend and "#f5f5f5" in legend  # note names both
    assert "Prediction against reference" in text and "desc-disagreement_dseg.png" in text
    assert "Prediction against reference" not in (reports / "sub-03.html").read_text()


def test_one_mean_dice_in_subject_and_group_reports(reports):
    rows = pd.read_csv(reports / "sub-01/anat/sub-01_desc-dice_stats.tsv", sep="\t",
                       na_values=["n/a"]).to_dict("records")
    expected = metrics.mean_dice(rows)
    with_background = np.nanmean([r["dice"] for r in rows])
    assert not math.isclose(expected, with_background, abs_tol=5e-4)  # background would change it
    text = (reports / "sub-01.html").read_text()
    shown = float(re.search(r"background excluded\): <strong>([0-9.]+)</strong>", text).group(1))
    group = pd.read_csv(reports / "group_dice.tsv", sep="\t").set_index("participant_id")
    assert shown == pytest.approx(expected, abs=5e-4)
    assert group.loc["sub-01", "mean_dice"] == pytest.approx(expected, abs=5e-4)


def test_qc_table_flagged_first_and_absent_structures_not_ok(reports):
    assert [qc_status(f, v) for f, v in ((True, 1.0), (False, 0.5), (False, float("nan")), ("False", None))] == [
        "flagged", "ok", "not checked", "not checked"]
    text = (reports / "sub-02.html").read_text()
    qc = text[text.index("<h3>QC flags</h3>"):]
    qc = qc[:qc.index("</table>")]
    order = re.findall(r"<tr[^>]*><td class=\"txt\">([^<]+)</td>", qc)
    assert order == ["missing_labels", "tiv_plausible", "fragmented_Left-Thalamus"]
    thalamus = re.search(r"fragmented_Left-Thalamus.*?</tr>", qc).group(0)
    assert "not checked" in thalamus and 'class="badge ok"' not in thalamus
    assert "1 of 3 checks flagged, 1 not checked" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Appended to a copy of a report: after load, records which images loaded and the legend entries.
_PROBE = """<script>window.addEventListener("load", () => {
  const pre = document.createElement("pre"); pre.id = "browser-probe";
  pre.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.getAttribute("src"), i.complete && i.naturalWidth > 0]),
    legend: [...document.querySelectorAll(".legend li")].map(li => li.textContent.trim())});
  document.body.appendChild(pre);});</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)


def browser_check(page: Path, tmp_path: Path, screenshot: Path | None = None) -> dict:
    """Open ``page`` in headless Chromium: console lines it logs (and a screenshot), then, on a
    copy beside it with :data:`_PROBE` appended, which images loaded and the legend entries."""
    shot = ["--window-size=1280,2400", f"--screenshot={screenshot or tmp_path / 'shot.png'}"]  # then it exits
    console = [line for line in _chromium(["--enable-logging=stderr", "--v=0", *shot, page.as_uri()],
                                          tmp_path / "profile").stderr.splitlines() if ":CONSOLE" in line]
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        dom = _chromium(["--dump-dom", "--virtual-time-budget=10000", probe.as_uri()], tmp_path / "profile").stdout
    finally:
        probe.unlink()
    found = re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.S)
    assert found, f"{page}: the probe did not run; DOM starts {dom[:200]!r}"
    return {"console": console, **json.loads(htmllib.unescape(found.group(1)))}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_every_report_loads_in_headless_chromium(reports, tmp_path):
    """Subject, group and bundled training reports: no console errors, every image loads,
    subject reports show their legend (screenshots under tmp_path)."""
    bundled = Path(metrics.__file__).parent / "models" / "default"  # copied: the probe is written beside it
    training = shutil.copytree(bundled, tmp_path / "model", ignore=shutil.ignore_patterns("*.safetensors"))
    pages = sorted(reports.glob("*.html")) + [training / "training_report.html"]
    assert [p.name for p in pages] == ["group.html", "sub-01.html", "sub-02.html", "sub-03.html",
                                       "training_report.html"]
    for page in pages:
        result = browser_check(page, tmp_path / page.stem, tmp_path / f"{page.stem}.png")
        assert result["console"] == [], page
        assert result["images"] and all(ok for _, ok in result["images"]), (page, result["images"])
        if page.name.startswith("sub-"):
            assert len(result["legend"]) >= 5 and any("Hippocampus" in e for e in result["legend"]), page
        assert Image.open(tmp_path / f"{page.stem}.png").size == (1280, 2400)
    # controls: a script error, a missing image and a missing legend are each caught
    bad = reports / "bad.html"
    bad.write_text('<html><body><img src="nowhere.png"><script>undefinedFunction();</script></body></html>')
    try:
        result = browser_check(bad, tmp_path / "bad")
    finally:
        bad.unlink()
    assert any("undefinedFunction" in line for line in result["console"])
    assert result["images"] == [["nowhere.png", False]] and result["legend"] == []

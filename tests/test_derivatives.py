"""BIDS derivatives: names, atomic publishing, lookup tables, dataset_description, validator."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from derivative_fixtures import MANIFEST, make_bids, make_result_dir
from l2s_pipelines.bids_app import derivatives as D
from l2s_pipelines.errors import InputError

VALIDATOR = shutil.which("bids-validator-deno") or str(Path(__file__).resolve().parents[1] / ".venv/bin/bids-validator-deno")


def test_prefix_keeps_source_entities_in_bids_order(tmp_path):
    p = D.derivative_prefix(tmp_path, {"subject": "01", "session": "pre", "run": 2, "acquisition": "mprage",
                                       "reconstruction": "norm", "ceagent": "gd"})
    assert p == tmp_path / "sub-01/ses-pre/anat/sub-01_ses-pre_acq-mprage_ce-gd_rec-norm_run-2"
    assert D.derivative_prefix(tmp_path, {"sub": "sub-02"}) == tmp_path / "sub-02/anat/sub-02"
    with pytest.raises(InputError, match="alphanumeric"):
        D.derivative_prefix(tmp_path, {"subject": "0_1"})
    with pytest.raises(InputError, match="subject"):
        D.derivative_prefix(tmp_path, {"session": "1"})


@pytest.fixture()
def published(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    D.write_dataset_description(out, bids_dir=bids, model_manifest=MANIFEST)
    D.write_bidsignore(out)
    src = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    res = make_result_dir(tmp_path / "work", src, seed=0, used_for_tuning=True)
    assert not D.image_is_complete(out, {"subject": "01"})
    written = D.publish_image_results(res, out, entities={"subject": "01"}, source_file=src, save_probseg=True)
    return out, res, written


def test_publish_writes_bids_names_and_exact_lookup_table(published):
    out, res, written = published
    anat = out / "sub-01/anat"
    assert written["dseg"] == anat / "sub-01_dseg.nii.gz"
    assert D.image_is_complete(out, {"subject": "01"})
    present = set(np.unique(np.asarray(nib.load(written["dseg"]).dataobj)).tolist())
    lines = written["dseg_tsv"].read_text().splitlines()
    assert lines[0].split("\t") == ["index", "name", "abbreviation", "color"]
    assert {int(line.split("\t")[0]) for line in lines[1:]} == present
    side = json.loads(written["dseg_json"].read_text())
    assert side["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert side["SpatialReference"] == "orig"
    assert side["Model"] == {"Name": "test-model", "SHA256": MANIFEST["weights"]["sha256"]}
    assert side["UsedForTuning"] is True and side["TotalIntracranialVolume"]["Method"]
    # the sidecar (completion marker) is written after every other file
    others = [p for k, p in written.items() if k != "dseg_json"]
    assert all(p.stat().st_mtime_ns <= written["dseg_json"].stat().st_mtime_ns for p in others)
    probseg = nib.load(written["probseg"])
    labels = json.loads(written["probseg_json"].read_text())["LabelMap"]
    assert probseg.ndim == 4 and probseg.shape[3] == len(labels) == 33
    assert {"figure_sagittal", "figure_coronal", "figure_axial"} <= set(written)
    assert written["figure_axial"].parent == out / "sub-01/figures"
    assert not list(out.rglob("*.l2s-tmp-*"))


def test_incomplete_when_a_table_or_marker_is_missing(published):
    out, _, written = published
    written["volumes"].unlink()
    assert not D.image_is_complete(out, {"subject": "01"})
    written["dseg_json"].write_text("{trunc")
    assert not D.image_is_complete(out, {"subject": "01"})


def test_publish_rejects_labels_outside_table_and_missing_files(tmp_path, published):
    out, res, _ = published
    dseg = nib.load(res / "dseg.nii.gz")
    data = np.asarray(dseg.dataobj).copy()
    data[0, 0, 0] = 99
    nib.save(nib.Nifti1Image(data, dseg.affine), res / "dseg.nii.gz")
    src = Path(json.loads((res / "info.json").read_text())["source"])
    with pytest.raises(InputError, match=r"\[99\]"):
        D.publish_image_results(res, out, entities={"subject": "01"}, source_file=src, save_probseg=False)
    (res / "volumes.tsv").unlink()
    with pytest.raises(InputError, match="volumes.tsv"):
        D.publish_image_results(res, out, entities={"subject": "01"}, source_file=src, save_probseg=False)


def test_dataset_description_merges_and_records_container(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "mine", "BIDSVersion": "1.9.0", "GeneratedBy": [{"Name": "other-tool"}]}))
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/l2s.sif")
    D.write_dataset_description(out, bids_dir=tmp_path / "bids", model_manifest=MANIFEST)
    other = {"name": "m2", "weights": {"sha256": "cd" * 32}}
    D.write_dataset_description(out, bids_dir=tmp_path / "bids", model_manifest=other)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["Name"] == "mine" and desc["DatasetType"] == "derivative"
    assert [g["Name"] for g in desc["GeneratedBy"]] == ["l2s-pipelines", "other-tool"]
    ours = desc["GeneratedBy"][0]
    assert ours["Container"] == {"Type": "apptainer", "URI": "file:///images/l2s.sif"}
    assert "m2" in ours["Description"] and "cd" * 32 in ours["Description"]
    assert [m["Name"] for m in desc["L2SModels"]] == ["test-model", "m2"]
    assert desc["SourceDatasets"] == [{"URL": (tmp_path / "bids").as_uri()}]
    assert desc["DatasetLinks"]["raw"] == (tmp_path / "bids").as_uri()


def _describe(args):
    out, bids, k = args
    for j in range(5):
        D.write_dataset_description(out, bids_dir=bids, model_manifest={"name": f"m{k}", "weights": {"sha256": f"{k}{j}"}})


def test_dataset_description_concurrent_writers_keep_valid_json(tmp_path):
    out = tmp_path / "out"
    with mp.get_context("fork").Pool(3) as pool:
        pool.map(_describe, [(out, tmp_path / "bids", k) for k in range(3)])
    desc = json.loads((out / "dataset_description.json").read_text())
    assert len(desc["L2SModels"]) == 15  # no update lost: every writer held the lock
    assert not list(out.glob("*.l2s-tmp-*"))


def test_clean_stale_temporaries(tmp_path):
    (tmp_path / "sub-01/anat").mkdir(parents=True)
    stale = tmp_path / "sub-01/anat/.sub-01_dseg.nii.gz.l2s-tmp-abc"
    stale.write_bytes(b"partial")
    keep = tmp_path / "sub-01/anat/sub-01_dseg.json"
    keep.write_text("{}")
    assert D.clean_stale_temporaries(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()


def _validate(folder: Path) -> list[dict]:
    proc = subprocess.run([VALIDATOR, "--datasetTypes", "derivative", "--format", "json", str(folder)],
                          capture_output=True, text=True, timeout=120)
    return [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]


@pytest.mark.skipif(not Path(VALIDATOR).exists(), reason="bids-validator-deno not installed")
def test_output_folder_passes_official_bids_validator(tmp_path):
    from l2s_pipelines.bids_app.group import run_group

    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "derivatives" / "l2s-pipelines"
    D.write_dataset_description(out, bids_dir=bids, model_manifest=MANIFEST)
    D.write_bidsignore(out)
    for i, sub in enumerate(("01", "02")):
        src = bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"
        res = make_result_dir(tmp_path / "work" / sub, src, seed=i, with_dice=(i == 0))
        D.publish_image_results(res, out, entities={"subject": sub}, source_file=src, save_probseg=True)
    (out / "logs").mkdir()
    (out / "logs" / "run_summary.tsv").write_text("subject\tstatus\n01\tok\n")
    assert run_group(out) == 0
    assert _validate(out) == []
    # control: the same folder without .bidsignore is reported, so the check above can fail
    (out / ".bidsignore").unlink()
    codes = {i["code"] for i in _validate(out)}
    assert "NOT_INCLUDED" in codes

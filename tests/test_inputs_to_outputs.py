"""Which inputs become which outputs: reference labels only from ``--reference-derivatives`` or
``desc-reference`` files (never an fMRIPrep tissue segmentation or an earlier l2s-pipelines
output that happens to sit under ``derivatives/``), a questionable reference never failing an
image, and every BIDS entity the schema allows for the input suffix (echo, part, ...) carried
into output names, two inputs mapping to one output being refused before anything is written."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from conftest import blob_volumes, build_bids, image_path, read_summary, run_cli, save_nifti
from l2s_pipelines.bids_app import cli, queries
from l2s_pipelines.bids_app.derivatives import derivative_prefix
from l2s_pipelines.errors import InputError


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):
        monkeypatch.setenv(var, "1")


def _derivative(root, name, generated_by, files: dict):
    """A derivative dataset ``root/derivatives/name`` holding ``files`` {relative path: array}."""
    d = root / "derivatives" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": generated_by}]}))
    for rel, data in files.items():
        save_nifti(d / rel, data.astype(np.int16))
    return d


def _tissue(seed):
    """A tissue segmentation with fMRIPrep's labels 1/2/3 (GM, WM, CSF)."""
    _, lab = blob_volumes(seed)
    return np.select([np.isin(lab, (3, 42)), np.isin(lab, (2, 41)), lab > 0], [1, 2, 3], 0)


def test_only_desc_reference_files_are_found_as_references(tmp_path, caplog):
    bids = build_bids(tmp_path / "bids", {"01": [None], "02": [None]})
    (bids / "derivatives" / "reference" / "sub-01" / "anat" / "sub-01_desc-reference_dseg.nii.gz").unlink()
    fmriprep = _derivative(bids, "fmriprep", "fMRIPrep", {
        "sub-01/anat/sub-01_dseg.nii.gz": _tissue(0), "sub-02/anat/sub-02_dseg.nii.gz": _tissue(1)})
    _, lab = blob_volumes(1)
    old = _derivative(bids, "l2s-pipelines-old", "l2s-pipelines", {"sub-02/anat/sub-02_dseg.nii.gz": lab})
    images = queries.collect_images(queries.load_layout(bids))
    with caplog.at_level(logging.WARNING, logger="l2s.queries"):
        found = queries.attach_references(images, queries.reference_roots(bids, tmp_path / "out"))
    assert [im.reference for im in found][0] == ""
    assert found[1].reference.endswith("derivatives/reference/sub-02/anat/sub-02_desc-reference_dseg.nii.gz")
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if str(fmriprep) in w]) == 1  # one warning naming the folder
    assert len([w for w in warnings if str(old) in w]) == 1
    # an explicit --reference-derivatives takes its dseg files whatever their desc
    explicit = queries.attach_references(images, queries.reference_roots(bids, tmp_path / "out", fmriprep),
                                         required=True)
    assert [im.reference.rsplit("/", 1)[-1] for im in explicit] == ["sub-01_dseg.nii.gz", "sub-02_dseg.nii.gz"]


def test_questionable_reference_never_fails_the_image(tmp_path, model_dir):
    bids = build_bids(tmp_path / "bids", {"01": [None]}, reference=False)
    fmriprep = _derivative(bids, "fmriprep", "fMRIPrep", {"sub-01/anat/sub-01_dseg.nii.gz": _tissue(0)})
    out = tmp_path / "out"
    # found under derivatives/ without desc-reference: skipped with one warning, no Dice
    proc = run_cli(bids, out, "participant", "--model", model_dir, "-w", tmp_path / "w", "--nprocs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(fmriprep) in proc.stderr and "not used as reference" in proc.stderr
    anat = out / "sub-01" / "anat"
    assert not (anat / "sub-01_desc-dice_stats.tsv").exists()
    assert json.loads((anat / "sub-01_dseg.json").read_text())["Reference"] is None
    # named explicitly, its unknown labels (and a reference on another grid) leave the image ok,
    # without Dice, with a warning in the sidecar and the report
    shutil.rmtree(out)
    (fmriprep / "sub-02" / "anat").mkdir(parents=True)
    build_bids(tmp_path / "bids", {"01": [None], "02": [None]}, reference=False)
    save_nifti(fmriprep / "sub-02" / "anat" / "sub-02_dseg.nii.gz", _tissue(1)[:-2].astype(np.int16))
    proc = run_cli(bids, out, "participant", "--model", model_dir, "-w", tmp_path / "w", "--nprocs", "2",
                   "--reference-derivatives", fmriprep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in read_summary(out)] == ["ok", "ok"]
    for sub, why in (("01", "unknown to the model"), ("02", "another grid")):
        side = json.loads((out / f"sub-{sub}" / "anat" / f"sub-{sub}_dseg.json").read_text())
        assert side["Reference"] is None and any(why in w and "reference not used" in w for w in side["Warnings"])
        assert not (out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-dice_stats.tsv").exists()
        assert why in (out / f"sub-{sub}.html").read_text()


def _multi_part_bids(root):
    """sub-01: a two-echo MEMPRAGE T1w; sub-02: the magnitude and phase parts of one T1w."""
    bids = build_bids(root, {"01": [None], "02": [None]})
    for sub, names in (("01", ("echo-1", "echo-2")), ("02", ("part-mag", "part-phase"))):
        src = image_path(bids, sub, None)
        for i, ent in enumerate(names):
            img, _ = blob_volumes(20 + i)
            save_nifti(src.with_name(f"sub-{sub}_{ent}_T1w.nii.gz"), img)
            src.with_name(f"sub-{sub}_{ent}_T1w.json").write_text("{}")
        src.unlink()
        src.with_name(src.name.replace(".nii.gz", ".json")).unlink()
    return bids


def test_schema_entities_carry_into_output_names(tmp_path):
    bids = _multi_part_bids(tmp_path / "bids")
    images = queries.collect_images(queries.load_layout(bids))
    names = [derivative_prefix(tmp_path, im.entities).name for im in images]
    assert names == ["sub-01_echo-1", "sub-01_echo-2", "sub-02_part-mag", "sub-02_part-phase"]
    # a reference without echo/part serves every echo and part of its image
    refs = queries.attach_references(images, queries.reference_roots(bids, tmp_path / "out"))
    assert all(im.reference.endswith(f"sub-{im.subject}_desc-reference_dseg.nii.gz") for im in refs)


def test_multi_echo_run_writes_one_output_per_echo(tmp_path, model_dir):
    bids = _multi_part_bids(tmp_path / "bids")
    out = tmp_path / "out"
    proc = run_cli(bids, out, "participant", "--participant-label", "01", "--model", model_dir,
                   "-w", tmp_path / "w", "--nprocs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for echo in ("1", "2"):
        side = json.loads((out / "sub-01" / "anat" / f"sub-01_echo-{echo}_dseg.json").read_text())
        assert side["Sources"] == [f"bids:raw:sub-01/anat/sub-01_echo-{echo}_T1w.nii.gz"]
    assert not (out / "sub-01" / "anat" / "sub-01_dseg.nii.gz").exists()


@pytest.mark.parametrize("case", ["extensions", "entity_not_allowed"])
def test_two_inputs_for_one_output_refused_before_writing(tmp_path, model_dir, capsys, case):
    bids = build_bids(tmp_path / "bids", {"01": [None]}, reference=False)
    src = image_path(bids, "01", None)
    if case == "extensions":  # the same name as .nii and .nii.gz
        first, second = src.with_name("sub-01_T1w.nii"), src
        save_nifti(first, blob_volumes(3)[0])
        extra = []
    else:  # inv- is not a T1w entity in BIDS: both would be sub-01_dseg
        first, second = src.with_name("sub-01_inv-1_T1w.nii.gz"), src.with_name("sub-01_inv-2_T1w.nii.gz")
        shutil.copy(src, first)
        src.rename(second)
        extra = ["--skip-bids-validation"]
    with pytest.raises(InputError, match="would write the same outputs"):
        queries.collect_images(queries.load_layout(bids, validate=not extra))
    out = tmp_path / "out"
    code = cli.main([str(a) for a in (bids, out, "participant", "--model", model_dir, "-w", tmp_path / "w", *extra)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(first) in err and str(second) in err
    assert not out.exists()

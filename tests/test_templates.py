"""Offline TemplateFlow access and the template-space outputs of one image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from l2s_pipelines.errors import InputError
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.registration import read_itk_affine
from template_fixtures import (TEST_TEMPLATE, brain_points, build_templateflow_home, known_affine,
                               subject_dseg)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return build_templateflow_home(tmp_path_factory.mktemp("tf"))


@pytest.fixture(scope="module")
def result_dir(home, tmp_path_factory):
    """A per-image result folder (dseg.nii.gz + info.json) of a subject = template moved by
    :func:`known_affine`."""
    out = tmp_path_factory.mktemp("result")
    dseg, affine = subject_dseg(home, known_affine())
    nib.save(nib.Nifti1Image(dseg, affine), out / "dseg.nii.gz")
    (out / "info.json").write_text(json.dumps({"labels": LabelTable.default().to_dict()}))
    return out


def test_missing_template_names_home_and_prefetch_command(home, monkeypatch):
    from l2s_pipelines.workflows.templates import get_template_files

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    with pytest.raises(InputError) as err:
        get_template_files("MNI152NLin2009cAsym", 1)
    msg = str(err.value)
    assert f"TEMPLATEFLOW_HOME={home}" in msg and "tf.get(\"MNI152NLin2009cAsym\"" in msg
    assert TEST_TEMPLATE in msg  # lists what is present
    with pytest.raises(InputError, match="res-01"):
        get_template_files(TEST_TEMPLATE, 1)  # only res-02 was built


def test_empty_placeholder_is_not_a_template(home, tmp_path, monkeypatch):
    from l2s_pipelines.workflows.templates import get_template_files

    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    placeholder = copy / f"tpl-{TEST_TEMPLATE}" / f"tpl-{TEST_TEMPLATE}_res-02_label-GM_probseg.nii.gz"
    placeholder.write_bytes(b"")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(copy))
    with pytest.raises(InputError, match="empty"):
        get_template_files(TEST_TEMPLATE, 2)


def _offline_prefix() -> list[str]:
    """``unshare -n`` (no network namespace access) when this machine allows it."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        return ["unshare", "-n"]
    pytest.skip("unshare -n is not permitted here")


def test_template_space_offline_without_home(home, result_dir, tmp_path):
    out = tmp_path / "template"
    code = (
        "import sys, json; from l2s_pipelines.workflows.templates import map_to_template; "
        f"s = map_to_template({str(result_dir)!r}, {str(out)!r}, {TEST_TEMPLATE!r}, 2); "
        "import templateflow.api as tf; "  # importing TemplateFlow offline must not fail either
        f"print(json.dumps({{'tf': str(tf.get({TEST_TEMPLATE!r}, resolution=2, suffix='T1w'))}}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    env.update(TEMPLATEFLOW_HOME=str(home), NO_ET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(_offline_prefix() + [sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["tf"].endswith("res-02_T1w.nii.gz")

    summary = json.loads((out / "template.json").read_text())
    truth = known_affine()
    matrix = read_itk_affine(out / summary["files"]["xfm"])
    assert summary["files"]["xfm"] == f"from-T1w_to-{TEST_TEMPLATE}_mode-image_xfm.txt"
    assert np.abs(brain_points(home) @ (matrix - truth).T).max() < 1.0
    dseg = nib.load(out / f"space-{TEST_TEMPLATE}_dseg.nii.gz")
    tpl_mask = nib.load(home / f"tpl-{TEST_TEMPLATE}" / f"tpl-{TEST_TEMPLATE}_res-02_desc-brain_mask.nii.gz")
    np.testing.assert_allclose(dseg.affine, tpl_mask.affine)
    assert dseg.shape == tpl_mask.shape and dseg.get_data_dtype() == np.int16
    assert set(np.unique(np.asarray(dseg.dataobj))) <= {0, 2, 3, 24}
    assert summary["tissue_dice"]["WM"] > 0.85 and summary["tissue_dice"]["GM"] > 0.7
    mask_mm3 = float((np.asarray(tpl_mask.dataobj) > 0).sum()) * 8.0
    assert summary["etiv_mm3"] == pytest.approx(mask_mm3 * np.linalg.det(truth[:3, :3]), rel=0.01)
    assert "determinant" in summary["etiv_method"]


def test_template_spaces_task_through_pydra(home, result_dir, tmp_path, monkeypatch):
    from pydra.engine.submitter import Submitter

    from l2s_pipelines.workflows.templates import template_spaces_task

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    task = template_spaces_task(result_dir=str(result_dir), template_ids=[TEST_TEMPLATE], resolution=2)
    with Submitter(worker="debug", cache_root=tmp_path / "cache") as sub:
        res = sub(task)
    assert not res.errored, res.errors
    out = Path(res.outputs.out_dir) / TEST_TEMPLATE
    assert (out / f"space-{TEST_TEMPLATE}_dseg.nii.gz").is_file()
    assert json.loads((out / "template.json").read_text())["tissue_dice"]["WM"] > 0.85

"""The README for a first-time user (issue 11, items 8 and 10): its sections in the order a new
user needs them, its label list equal to the model's table, and its Python example run as written."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import blob_volumes, save_nifti
from test_segment_entry_points import code_block

README = Path(__file__).resolve().parents[1] / "README.md"


def _sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", README.read_text(), flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def test_sections_in_the_order_of_a_first_time_user():
    titles = list(_sections())
    wanted = ["Quick start", "Outputs", "Labels", "Time and memory per image", "On a cluster", "Training",
              "The bundled model, and how accurate it is", "Benchmarks"]
    assert [t for t in titles if t in wanted] == wanted, titles
    intro = README.read_text().split("\n## ", 1)[0]
    assert "33 labels" in intro  # what it does
    # its honest status: the bundled model's measured held-out Dice, and a warning below the bar
    from l2s_pipelines.io.checkpoint import default_model_dir, read_manifest
    from l2s_pipelines.model_card import ACCURACY_BAR, measured_accuracy
    dice = measured_accuracy(read_manifest(default_model_dir()))
    assert dice is not None and f"{dice:.2f}" in intro
    assert (dice < ACCURACY_BAR) == ("not accurate enough" in intro)
    quick = _sections()["Quick start"]
    assert "make demo" in quick and "make test" in quick and "l2s-segment" in quick and "l2s-bids" in quick


def test_label_list_is_the_model_label_table():
    from l2s_pipelines.labels import LabelTable

    labels = _sections()["Labels"]
    table = LabelTable.default()
    for value, name in zip(table.values, table.names):
        assert f"| {value} | {name} |" in labels or f"{value} {name}" in labels, (value, name)
    listed = {int(v) for v in re.findall(r"\|\s*(\d+)\s*\|", labels)} | {
        int(v) for v in re.findall(r"(?:: |, )(\d+) \S", labels)}
    assert listed == set(table.values)


def test_results_block_and_citation_kept():
    text = README.read_text()
    assert text.count("<!-- results:start -->") == 1 and text.count("<!-- results:end -->") == 1
    assert "Learn2Synth: Learning" in _sections()["Citing"]


def test_python_api_example_runs_as_written(tmp_path, monkeypatch):
    block = code_block(README, "python-api")
    assert len([line for line in block.splitlines() if line.strip()]) <= 5
    monkeypatch.chdir(tmp_path)
    save_nifti(tmp_path / "sub-01_T1w.nii.gz", blob_volumes(0)[0])
    exec(compile(block.replace('device="auto"', 'device="cpu"'), str(README), "exec"), {})
    dseg = nib.load(tmp_path / "sub-01_dseg.nii.gz")
    assert dseg.shape == (40, 40, 40) and dseg.get_data_dtype() == np.int16
    assert set(np.unique(np.asarray(dseg.dataobj))) <= {0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18,
                                                         24, 26, 28, 41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53,
                                                         54, 58, 60}

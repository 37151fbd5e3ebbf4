"""Group level from derivatives alone: wide tables, robust-z outliers, HTML and exit codes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derivative_fixtures import MANIFEST, make_bids, make_result_dir
from l2s_pipelines.bids_app import derivatives as D
from l2s_pipelines.bids_app import group as G
from l2s_pipelines.bids_app.group import outliers, robust_z, run_group
from l2s_pipelines.bids_app.group_figures import GROUP_COLOURS, MAX_ROWS, dice_plot, heatmap_rows, volume_heatmap

SUBJECTS = ("01", "02", "03", "04")
ACCURACY_NOTE = "Model test-tiny carries no measured accuracy on held-out real scans: treat it as unvalidated."


@pytest.fixture(scope="module")
def group_out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("group")
    bids = make_bids(tmp / "bids", subjects=SUBJECTS)
    out = tmp / "out"
    D.write_dataset_description(out, bids_dir=bids, model_manifest=MANIFEST)
    for i, sub in enumerate(SUBJECTS):
        src = bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"
        res = make_result_dir(tmp / "work" / sub, src, seed=i, used_for_tuning=(i == 0),
                              with_dice=(i < 2), with_probseg=False, flagged=(i == 3),
                              accuracy_warning=ACCURACY_NOTE if i == 1 else None)
        D.publish_image_results(res, out, entities={"subject": sub}, source_file=src, save_probseg=False)
    assert run_group(out) == 0
    return out


def test_wide_tables_one_row_per_image(group_out):
    hard = pd.read_csv(group_out / "group_volumes.tsv", sep="\t")
    soft = pd.read_csv(group_out / "group_volumes_soft.tsv", sep="\t")
    assert hard["participant_id"].tolist() == [f"sub-{s}" for s in SUBJECTS]
    assert list(hard.columns[:5]) == ["image", "participant_id", "session_id", "tiv_mm3", "tiv_method"]
    assert len(hard.columns) == 5 + 32 and list(soft.columns) == list(hard.columns)
    single = pd.read_csv(group_out / "sub-02/anat/sub-02_desc-volumes_morph.tsv", sep="\t")
    expected = single.set_index("name")["volume_hard_mm3"]
    row = hard.set_index("participant_id").loc["sub-02"]
    assert np.allclose(row[expected.index[1:]].astype(float), expected.iloc[1:])
    dice = pd.read_csv(group_out / "group_dice.tsv", sep="\t")
    assert dice["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert dice["used_for_tuning"].tolist() == [True, False]
    assert dice["mean_dice"].between(0, 1).all()
    qc = pd.read_csv(group_out / "group_qc.tsv", sep="\t")
    assert qc["n_flagged"].tolist() == [0, 0, 0, 1]
    assert qc["missing_labels_flagged"].tolist() == [False, False, False, True]


def test_group_html_links_subject_reports_and_figures(group_out):
    html = (group_out / "group.html").read_text()
    links = set(re.findall(r'href="(sub-\d+)\.html#', html))
    assert links == {f"sub-{s}" for s in SUBJECTS}
    assert all((group_out / f"{link}.html").is_file() for link in links)
    images = re.findall(r'src="([^"]+)"', html)
    assert images and all((group_out / i).is_file() for i in images)
    assert "Used to tune the model (not held out): sub-01" in html


def test_model_accuracy_warning_in_sidecar_and_reports(group_out):
    import json
    side = json.loads((group_out / "sub-02/anat/sub-02_dseg.json").read_text())
    assert side["Model"]["AccuracyWarning"] == ACCURACY_NOTE and ACCURACY_NOTE in side["Warnings"]
    assert "AccuracyWarning" not in json.loads((group_out / "sub-01/anat/sub-01_dseg.json").read_text())["Model"]
    assert ACCURACY_NOTE in (group_out / "sub-02.html").read_text()
    assert (group_out / "group.html").read_text().count(ACCURACY_NOTE) == 1


def test_robust_z_flags_only_the_deviant_image():
    values = pd.DataFrame({"a": [10.0, 10.2, 9.9, 10.1, 14.0], "b": [1.0, 1.0, 1.0, 1.0, 1.0]})
    z = robust_z(values)
    assert abs(z["a"].iat[4]) > 3 and (z["a"].iloc[:4].abs() < 3).all()
    assert z["b"].isna().all()  # MAD 0: no z-score rather than infinity
    assert robust_z(values.iloc[:2]).isna().all().all()  # too few images
    hard = pd.DataFrame({"image": list("pqrst"), "participant_id": list("PQRST"), "session_id": "n/a",
                         "tiv_mm3": [100.0] * 5, "tiv_method": "x", "lab": [10, 10.2, 9.9, 10.1, 14.0]})
    found = outliers(hard)
    assert found[["image", "label"]].values.tolist() == [["t", "lab"]]


def test_group_without_derivatives_exits_2(tmp_path, capsys):
    assert run_group(tmp_path) == 2
    assert "no finished segmentations" in capsys.readouterr().err


def _has_colour(png, colour: str) -> bool:
    rgb = np.asarray(Image.open(png).convert("RGB"))
    return bool((rgb == [int(colour[i:i + 2], 16) for i in (1, 3, 5)]).all(axis=2).any())


def _synthetic_group(n: int, n_tuned: int, seed: int = 0):
    """Wide tables as build_group makes them, for ``n`` images (no derivatives on disk)."""
    rng = np.random.default_rng(seed)
    labels = [f"Left-Structure-{i:02d}" for i in range(32)]
    ids = pd.DataFrame({"image": [f"sub-{i:04d}" for i in range(n)],
                        "participant_id": [f"sub-{i:04d}" for i in range(n)], "session_id": "n/a"})
    hard = pd.concat([ids, pd.DataFrame({"tiv_mm3": 1.5e6, "tiv_method": "1"}, index=ids.index),
                      pd.DataFrame(rng.normal(1e4, 500, (n, 32)), columns=labels)], axis=1)
    dice = pd.concat([ids, pd.DataFrame({"used_for_tuning": np.arange(n) < n_tuned}),
                      pd.DataFrame(rng.uniform(0.6, 0.95, (n, 32)), columns=labels)], axis=1)
    dice.insert(4, "mean_dice", dice[labels].mean(axis=1))
    qc = ids.assign(n_flagged=(np.arange(n) % 97 == 0).astype(int))
    return hard, dice, qc, labels


@pytest.mark.parametrize("n", [2, 2000])
def test_group_report_readable_for_2_and_2000_images(tmp_path, n):
    hard, dice, qc, labels = _synthetic_group(n, n_tuned=min(n - 1, 22))
    if n > 3:
        hard.loc[[7, 1500], labels[3]] = 3e4  # planted outliers
    relative = hard[labels].div(hard["tiv_mm3"], axis=0) * 100
    z = robust_z(relative)
    figures = {"volumes": volume_heatmap(relative, z, hard["image"].tolist(), {"sub-0000"},
                                         tmp_path / "figures" / "group_volumes.png"),
               "dice": dice_plot(dice, labels, tmp_path / "figures" / "group_dice.png")}
    width, height = Image.open(figures["volumes"]).size
    assert width < 1100 and 200 < height < 1300  # bounded whatever the number of images
    rows = heatmap_rows(z)
    assert len(rows) == min(n, MAX_ROWS)
    if n > MAX_ROWS:
        assert set(rows[:2]) == {7, 1500}  # the most atypical images are the ones shown first
    # held-out and tuning images are drawn apart, in their own colours
    assert all(_has_colour(figures["dice"], c) for c in GROUP_COLOURS.values())
    held_out_only = dice_plot(dice[~dice["used_for_tuning"]], labels, tmp_path / "held_out.png")
    assert not _has_colour(held_out_only, GROUP_COLOURS["used for tuning"])
    found = outliers(hard)
    text = G._group_html(tmp_path, hard, dice, qc, found, figures)
    assert len(text) < 2_000_000 and text.count('<div class="scroll">') >= 2
    held = dice.loc[~dice["used_for_tuning"], "mean_dice"]
    assert f"<td class=\"txt\">held out</td><td>{len(held)}</td><td>{held.mean():.3f}</td>" in text
    if n > 20:
        assert "and 2 more" in text  # 22 tuning images: the callout names 20 and counts the rest
        first = re.search(r'<tbody><tr><td class="txt"><a href="(sub-\d+)\.html', text).group(1)
        assert first in set(found["participant_id"]) | set(qc.loc[qc["n_flagged"] > 0, "participant_id"])

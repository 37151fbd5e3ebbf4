"""Every TSV is written through pandas with fixed decimals and ``n/a``, has a JSON data
dictionary beside it, keeps long method texts out of its rows, and group outliers name the
session."""

from __future__ import annotations

import json

import pandas as pd

from derivative_fixtures import MANIFEST, make_bids, make_result_dir
from l2s_pipelines.bids_app import derivatives as D
from l2s_pipelines.bids_app.group import run_group

LONG_METHOD = "sum of soft volumes of all non-background labels " * 5  # ~250 characters


def test_tables_fixed_decimals_na_and_data_dictionaries(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    out = tmp_path / "out"
    D.write_dataset_description(out, bids_dir=bids, model_manifest=MANIFEST)
    for i, sub in enumerate(("01", "02", "03")):
        src = bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"
        res = make_result_dir(tmp_path / "work" / sub, src, seed=i, with_dice=(i == 0), with_probseg=False)
        vols = pd.read_csv(res / "volumes.tsv", sep="\t")
        vols.loc[1, "volume_hard_mm3"] = 248511.99999999994  # what float sums give
        vols.loc[2, "volume_soft_mm3"] = float("nan")
        vols.to_csv(res / "volumes.tsv", sep="\t", index=False, na_rep="n/a")
        info = json.loads((res / "info.json").read_text())
        info["tiv_method"] = LONG_METHOD
        (res / "info.json").write_text(json.dumps(info))
        D.publish_image_results(res, out, entities={"subject": sub, "session": "a"}, source_file=src,
                                save_probseg=False)
    morph = (out / "sub-01/ses-a/anat/sub-01_ses-a_desc-volumes_morph.tsv").read_text()
    assert "248512.000" in morph and "99999" not in morph and "\tn/a" in morph and "nan" not in morph
    assert run_group(out) == 0
    tsvs = sorted(p for p in out.rglob("*.tsv") if not p.name.endswith("_dseg.tsv"))
    assert len(tsvs) >= 3 * 2 + 1 + 5
    for tsv in tsvs:  # each table has its data dictionary, describing its columns
        side = json.loads(tsv.with_suffix(".json").read_text())
        columns = pd.read_csv(tsv, sep="\t", nrows=0).columns
        assert set(side) == set(columns), tsv
        assert all("Description" in v for v in side.values()), tsv
    units = json.loads((out / "sub-01/ses-a/anat/sub-01_ses-a_desc-volumes_morph.json").read_text())
    assert units["volume_hard_mm3"]["Units"] == "mm^3"
    hard = (out / "group_volumes.tsv").read_text()
    assert LONG_METHOD not in hard
    assert pd.read_csv(out / "group_volumes.tsv", sep="\t")["tiv_method"].astype(str).tolist() == ["1"] * 3
    levels = json.loads((out / "group_volumes.json").read_text())["tiv_method"]["Levels"]
    assert levels == {"1": LONG_METHOD}
    assert "session_id" in pd.read_csv(out / "group_outliers.tsv", sep="\t", nrows=0).columns
    assert {"*_morph.json", "*_stats.json"} <= set((out / ".bidsignore").read_text().split())

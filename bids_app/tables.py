"""Every TSV the app writes goes through :func:`write_table`: pandas, fixed decimals (no
``248511.99999999994``), ``n/a`` for missing values, written atomically, and a JSON data
dictionary beside it (``x.tsv`` -> ``x.json``) describing its columns, as BIDS asks of tabular
files.

Example
-------
>>> import pandas as pd
>>> write_table(pd.DataFrame({"volume_mm3": [248511.99999999994, None]}), "t.tsv",
...             {"volume_mm3": {"Description": "Volume", "Units": "mm^3"}})  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

#: Decimals of floating-point cells (mm^3 volumes, Dice, percentages, seconds).
DECIMALS = 3
_MM3 = "mm^3"
_LABEL = {"index": "Label value in the segmentation (see the _dseg.tsv look-up table).",
          "name": "Label name."}
#: Data dictionaries of the tables (column -> description, or BIDS column object).
VOLUMES = {**_LABEL,
           "volume_hard_mm3": {"Description": "Hard volume: voxels carrying the label times the voxel volume.",
                               "Units": _MM3},
           "volume_soft_mm3": {"Description": "Soft volume: sum of the label's posterior probabilities times "
                                              "the voxel volume (as SynthSeg reports).", "Units": _MM3}}
DICE = {**_LABEL,
        "dice": "Dice overlap with the reference label map (n/a: label absent from both).",
        "volume_pred_mm3": {"Description": "Volume of the label in the segmentation (voxels scored against the "
                                           "reference only).", "Units": _MM3},
        "volume_ref_mm3": {"Description": "Volume of the label in the reference.", "Units": _MM3},
        "volume_diff_pct": {"Description": "100 x (segmentation - reference) / reference volume "
                                           "(n/a: label absent from the reference).", "Units": "%"}}
QC = {"name": "QC measure.", "value": "Measured value (units in the description).",
      "threshold": "Threshold of the flag (a [low, high] range for total intracranial volume).",
      "flagged": "True when the value is beyond its threshold: a flag for review, not an exclusion.",
      "description": "What is measured."}


def data_dictionary(columns, descriptions: dict) -> dict:
    """BIDS column descriptions (``{"Description": ..., ["Units", "Levels"]}``) of ``columns``;
    a plain string in ``descriptions`` becomes the ``Description``. Columns not described there
    (e.g. one per label in group tables) get ``descriptions["*"]`` when given."""
    out = {}
    for col in columns:
        desc = descriptions.get(col, descriptions.get("*"))
        if desc is None:
            continue
        out[str(col)] = {"Description": desc} if isinstance(desc, str) else dict(desc)
    return out


def write_table(frame, path, descriptions: dict | None = None, *, decimals: int = DECIMALS) -> Path:
    """Write ``frame`` (a pandas DataFrame) to ``path`` as TSV and, with ``descriptions``, its
    data dictionary to ``path`` with ``.json``. Returns ``path``."""
    from l2s_pipelines.bids_app.derivatives import atomic_write_text, write_json

    path = Path(path)
    text = frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format=f"%.{decimals}f", lineterminator="\n")
    atomic_write_text(path, text)
    if descriptions is not None:
        write_json(path.with_suffix(".json"), data_dictionary(frame.columns, descriptions))
    return path


def read_tsv(path):
    """A TSV written by the segmentation task or this module (``n/a`` = missing) as a DataFrame."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def qc_frame(qc: dict):
    """The QC flags of ``qc.json`` as a table (columns of :data:`QC`)."""
    import pandas as pd

    rows = [{"name": f.get("name"), "value": f.get("value"),
             "threshold": None if f.get("threshold") is None else str(f.get("threshold")),
             "flagged": bool(f.get("flagged")), "description": f.get("description", "")}
            for f in qc.get("flags", [])]
    frame = pd.DataFrame(rows, columns=list(QC))
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def lookup_table_tsv(dseg_path, labels) -> tuple[str, list[dict]]:
    """dseg.tsv text (BIDS look-up table: index, name, abbreviation, color) for exactly the label
    values present in the image ``dseg_path``, in table order (:meth:`LabelTable.tsv_text
    <l2s_pipelines.labels.LabelTable.tsv_text>`), and those label entries."""
    import nibabel as nib
    import numpy as np

    from l2s_pipelines.errors import InputError
    from l2s_pipelines.labels import LabelTable, present_values

    present = present_values(np.asanyarray(nib.load(str(dseg_path)).dataobj))
    table = LabelTable.from_dict(labels)
    unknown = present - set(table.values)
    if unknown:
        raise InputError(f"{dseg_path}: label values {sorted(unknown)} are not in the label table")
    return table.tsv_text(values=present), [e for e in table.entries() if e["value"] in present]

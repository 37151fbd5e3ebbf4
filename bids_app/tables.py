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

from l2s_pipelines.bids_app.derivatives import atomic_write_text, write_json

#: Decimals of floating-point cells (mm^3 volumes, Dice, percentages, seconds).
DECIMALS = 3


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
    path = Path(path)
    text = frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format=f"%.{decimals}f", lineterminator="\n")
    atomic_write_text(path, text)
    if descriptions is not None:
        write_json(path.with_suffix(".json"), data_dictionary(frame.columns, descriptions))
    return path

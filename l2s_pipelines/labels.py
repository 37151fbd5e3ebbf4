"""Segmentation label table (output channels) and generation classes for synthesis.

A :class:`LabelTable` lists the *target* labels in output-channel order: channel ``i`` of a
network's output is label value ``table.values[i]``. Source label maps (FreeSurfer numbering,
possibly with extra "generation" labels) are mapped to channel indices with
:meth:`LabelTable.value_lut`; the reference value 255 means "ignore this voxel" and maps to
:data:`IGNORE_INDEX`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from l2s_pipelines.errors import InputError

if TYPE_CHECKING:  # torch is imported by the methods that need it: the BIDS driver never does
    import torch

#: Target value for voxels that losses and Dice must skip (reference label 255).
IGNORE_INDEX = -100
#: Reference label value meaning "ignore this voxel".
IGNORE_VALUE = 255
#: FreeSurfer labels outside the output set that map to a target label (lesions -> white matter).
DEFAULT_SOURCE_MAP = {25: 2, 57: 41}
#: Left/right pairs of FreeSurfer labels outside the SynthSeg 2.0 output set (lesions, vessels).
EXTRA_LR_PAIRS = {25: 57, 57: 25, 30: 62, 62: 30}
TISSUES = ("background", "csf", "cortex", "white_matter", "deep_grey", "cerebellum", "brainstem")
_COLUMNS = ("index", "name", "abbreviation", "color", "lr_partner", "tissue")


@dataclass(frozen=True)
class LabelTable:
    """Target labels in output-channel order.

    Attributes
    ----------
    values : list[int]
        Label value of each output channel (channel ``i`` <-> ``values[i]``); ``values[0]`` is
        the background (0).
    names, abbreviations : list[str]
    colors : list[str]
        ``"#rrggbb"`` display colours (FreeSurfer LUT).
    lr_partner : list[int]
        Label value of the contralateral structure, or the label itself for midline labels.
    tissue : list[str]
        Tissue class of each label, one of :data:`TISSUES`.
    source_map : dict[int, int]
        Extra source label value -> target label value (e.g. lesions 25 -> 2, 57 -> 41).
    """

    values: list[int]
    names: list[str]
    abbreviations: list[str]
    colors: list[str]
    lr_partner: list[int]
    tissue: list[str]
    source_map: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_SOURCE_MAP))

    def __post_init__(self):
        n = len(self.values)
        lists = (self.names, self.abbreviations, self.colors, self.lr_partner, self.tissue)
        if any(len(x) != n for x in lists):
            raise ValueError("label table columns have different lengths")
        if len(set(self.values)) != n or n == 0 or self.values[0] != 0:
            raise ValueError("label values must be unique and start with background 0")
        known = set(self.values)
        for v, p in zip(self.values, self.lr_partner):
            if p not in known:
                raise ValueError(f"lr_partner {p} of label {v} is not in the table")
        for t in self.tissue:
            if t not in TISSUES:
                raise ValueError(f"unknown tissue {t!r}; choose from {TISSUES}")
        for src, dst in self.source_map.items():
            if dst not in known:
                raise ValueError(f"source_map target {dst} (from {src}) is not in the table")

    def __len__(self) -> int:
        return len(self.values)

    # ----------------------------------------------------------------- construction
    @classmethod
    def default(cls) -> "LabelTable":
        """The 33 labels of SynthSeg 2.0 (background + 32 structures)."""
        ref = resources.files("l2s_pipelines.data").joinpath("synthseg2_labels.tsv")
        with resources.as_file(ref) as path:
            return cls.from_tsv(path)

    @classmethod
    def from_tsv(cls, path) -> "LabelTable":
        """Read a TSV with at least columns ``index`` (label value) and ``name``.

        Missing optional columns get defaults: abbreviation = name, color grey, lr_partner =
        itself, tissue guessed as background for 0 and deep_grey otherwise. So a BIDS
        ``dseg.tsv`` written by :meth:`to_tsv` reads back.
        """
        path = Path(path)
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except OSError as e:
            raise InputError(f"{path}: cannot read label table ({e})") from e
        if not rows or not {"index", "name"} <= set(rows[0]):
            raise InputError(f"{path}: label table needs columns 'index' and 'name'")
        try:
            values = [int(r["index"]) for r in rows]
            return cls(
                values=values,
                names=[r["name"] for r in rows],
                abbreviations=[r.get("abbreviation") or r["name"] for r in rows],
                colors=[r.get("color") or "#808080" for r in rows],
                lr_partner=[int(r.get("lr_partner") or v) for r, v in zip(rows, values)],
                tissue=[r.get("tissue") or ("background" if v == 0 else "deep_grey")
                        for r, v in zip(rows, values)],
                source_map={k: v for k, v in DEFAULT_SOURCE_MAP.items() if v in values},
            )
        except ValueError as e:
            raise InputError(f"{path}: invalid label table ({e})") from e

    def tsv_text(self, *, full: bool = False, values=None) -> str:
        """The text of a BIDS ``dseg.tsv`` (columns index, name, abbreviation, color), in table
        order; ``values``: only the labels with these values (e.g. those present in an image).

        With ``full=True`` also lr_partner and tissue (the package's own table format).
        """
        cols = _COLUMNS if full else _COLUMNS[:4]
        keep = None if values is None else {int(v) for v in values}
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for i in range(len(self)):
            if keep is None or self.values[i] in keep:
                row = [self.values[i], self.names[i], self.abbreviations[i], self.colors[i],
                       self.lr_partner[i], self.tissue[i]]
                w.writerow(row[: len(cols)])
        return buf.getvalue()

    def to_tsv(self, path, *, full: bool = False, values=None) -> Path:
        """Write :meth:`tsv_text` to ``path`` (see there for ``full`` and ``values``)."""
        path = Path(path)
        path.write_text(self.tsv_text(full=full, values=values), encoding="utf-8", newline="")
        return path

    def entries(self) -> list[dict]:
        """One ``{"value", "name", "abbreviation", "color"}`` dict per label, in table order
        (the rows of ``dseg.tsv``)."""
        return [{"value": v, "name": n, "abbreviation": a, "color": c}
                for v, n, a, c in zip(self.values, self.names, self.abbreviations, self.colors)]

    def to_dict(self) -> dict:
        """JSON-able form: ``{"labels": [{index, name, abbreviation, color, lr_partner, tissue}],
        "source_map": {"25": 2, ...}}`` (``index`` is the label value, as in BIDS dseg.tsv)."""
        labels = [dict(index=self.values[i], name=self.names[i], abbreviation=self.abbreviations[i],
                       color=self.colors[i], lr_partner=self.lr_partner[i], tissue=self.tissue[i])
                  for i in range(len(self))]
        return {"labels": labels, "source_map": {str(k): v for k, v in self.source_map.items()}}

    @classmethod
    def from_dict(cls, d) -> "LabelTable":
        """Inverse of :meth:`to_dict`; also accepts a bare list of label dicts (manifest form)."""
        labels = d["labels"] if isinstance(d, dict) else d
        values = [int(x["index"]) for x in labels]
        source_map = (d.get("source_map") if isinstance(d, dict) else None)
        if source_map is None:
            source_map = {k: v for k, v in DEFAULT_SOURCE_MAP.items() if v in values}
        return cls(
            values=values,
            names=[x["name"] for x in labels],
            abbreviations=[x.get("abbreviation", x["name"]) for x in labels],
            colors=[x.get("color", "#808080") for x in labels],
            lr_partner=[int(x.get("lr_partner", x["index"])) for x in labels],
            tissue=[x.get("tissue", "background" if int(x["index"]) == 0 else "deep_grey")
                    for x in labels],
            source_map={int(k): int(v) for k, v in source_map.items()},
        )

    # ----------------------------------------------------------------- lookups
    def index_of(self, value: int) -> int:
        """Output-channel index of label ``value`` (KeyError if not a target label)."""
        try:
            return self.values.index(int(value))
        except ValueError:
            raise KeyError(f"label {value} is not in the label table") from None

    def value_lut(self, max_value: int) -> torch.Tensor:
        """LongTensor ``(max(max_value, 255) + 1,)``: source label value -> channel index.

        Unknown labels -> 0 (background); ``source_map`` labels (lesions) -> their target's
        channel; 255 -> :data:`IGNORE_INDEX`.
        """
        import torch

        size = max(int(max_value), IGNORE_VALUE) + 1
        lut = torch.zeros(size, dtype=torch.long)
        for src, dst in self.source_map.items():
            if src < size:
                lut[src] = self.index_of(dst)
        for i, v in enumerate(self.values):
            if v < size:
                lut[v] = i
        lut[IGNORE_VALUE] = IGNORE_INDEX
        return lut

    def source_to_target(self, label_map: torch.Tensor) -> torch.Tensor:
        """Map a tensor of source label values (any shape, integer) to channel indices."""
        lut = self.value_lut(int(label_map.max()) if label_map.numel() else 0)
        return lut.to(label_map.device)[label_map.long()]

    def channel_flip_lut(self) -> torch.Tensor:
        """LongTensor ``(K,)``: channel index -> channel index of its left/right partner (the
        channel order of a left-right mirrored prediction)."""
        import torch

        return torch.tensor([self.index_of(p) for p in self.lr_partner], dtype=torch.long)

    def partner_of(self, value: int) -> int:
        """Left/right partner of a source label value (table labels, lesions, vessels)."""
        if value in self.values:
            return self.lr_partner[self.values.index(value)]
        return EXTRA_LR_PAIRS.get(int(value), int(value))


def generation_classes(values, table_path=None) -> dict[int, int]:
    """Generation class (labels sharing one random intensity) of each label value.

    Parameters
    ----------
    values : iterable of int
        Label values present in the source maps.
    table_path : path, optional
        TSV with columns ``label`` and ``generation_class`` (e.g. the shared
        ``generation_labels.tsv``). Values missing from it get a class of their own.
        Without a table: one class per label, left/right partners merged.

    Returns
    -------
    dict[int, int]
        Label value -> class index in ``0..C-1`` (numbered in order of sorted values).
    """
    values = sorted({int(v) for v in values})
    raw: dict[int, tuple] = {}
    if table_path is not None:
        path = Path(table_path)
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            table = {int(r["label"]): int(r["generation_class"]) for r in rows}
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise InputError(f"{path}: cannot read generation classes "
                             f"(need columns label, generation_class): {e}") from e
        for v in values:
            raw[v] = ("table", table[v]) if v in table else ("own", v)
    else:
        default = LabelTable.default()
        for v in values:
            raw[v] = ("pair", min(v, default.partner_of(v)))
    numbering: dict[tuple, int] = {}
    for v in values:
        numbering.setdefault(raw[v], len(numbering))
    return {v: numbering[raw[v]] for v in values}


def present_values(label_map) -> set[int]:
    """The distinct values of an integer label map ``(X, Y, Z)`` (any shape). 8- and 16-bit maps
    (every dseg) are looked up on their own bit patterns in one pass that marks a table of 256 or
    65,536 entries (no sort and no 64-bit copy, unlike ``np.unique`` or ``np.bincount``: about
    0.06 s against 0.24 s for 256^3); other dtypes go through np.unique.

    >>> import numpy as np
    >>> sorted(present_values(np.array([[0, 3], [-2, 3]], dtype=np.int16)))
    [-2, 0, 3]
    """
    import numpy as np

    lab = np.asarray(label_map)
    if lab.dtype.kind in "ui" and lab.dtype.itemsize <= 2:
        bits = lab.view(np.dtype(f"u{lab.dtype.itemsize}")).ravel(order="K")  # no copy for F order
        seen = np.zeros(2 ** (8 * lab.dtype.itemsize), dtype=bool)
        seen[bits] = True
        hits = np.flatnonzero(seen)
        if lab.dtype.kind == "i":  # the upper half of the bit patterns are negative values
            half = 2 ** (8 * lab.dtype.itemsize - 1)
            hits = np.where(hits >= half, hits - 2 * half, hits)
        return set(int(v) for v in hits)
    return set(np.unique(lab).astype(int).tolist())

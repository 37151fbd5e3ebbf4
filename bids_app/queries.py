"""BIDS queries (pybids, in the main process only: a layout cannot be pickled).

Bulk queries joined in Python (one ``get()`` for all subjects, not one per subject). Empty
results are errors that say what exists: pybids returns ``[]`` silently for a misspelt label.

Example
-------
>>> layout = load_layout("/data/bids")  # doctest: +SKIP
>>> images = collect_images(layout, suffix="T1w", participants=("01",))  # doctest: +SKIP
>>> images[0].entities  # doctest: +SKIP
{'subject': '01', 'session': 'pre', 'suffix': 'T1w', 'datatype': 'anat'}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from l2s_pipelines.bids_app.entities import carried_entities, file_entities
from l2s_pipelines.bids_app.dataset_scan import safe_indexer
from l2s_pipelines.errors import InputError

LOG = logging.getLogger("l2s.queries")
NIFTI_EXT = [".nii", ".nii.gz"]
#: The ``desc-`` label that marks a file under ``BIDS_DIR/derivatives`` as reference labels.
REFERENCE_DESC = "reference"


@dataclass(frozen=True)
class ImageJob:
    """One input image to segment: its path, BIDS entities, and the reference dseg if found."""

    path: str
    entities: dict = field(hash=False)
    reference: str = ""

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def session(self) -> str:
        return self.entities.get("session", "")


def _bids_error(root: Path, exc: Exception) -> InputError:
    return InputError(f"{root}: not a valid BIDS dataset ({str(exc).splitlines()[0]})")


def load_layout(bids_dir, *, validate: bool = True):
    """Index the input dataset with pybids (``validate=True`` unless skipped). Raises
    :class:`InputError` for a missing folder or one that is not BIDS."""
    from bids import BIDSLayout

    root = Path(bids_dir)
    if not root.is_dir():
        raise InputError(f"{root}: input BIDS folder does not exist")
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root}: not a BIDS dataset (no dataset_description.json)")
    indexer = safe_indexer(root, validate=validate)
    try:
        layout = BIDSLayout(str(root), validate=validate, derivatives=False, indexer=indexer)
    except Exception as exc:  # pybids raises several types (BIDSValidationError, ValueError)
        raise _bids_error(root, exc) from exc
    if not layout.get_subjects():
        raise InputError(f"{root}: BIDS dataset holds no sub-<label> folders")
    return layout


def _query_value(value):
    """Filter-file value -> pybids query value (``null`` absent, ``"*"`` any)."""
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def collect_images(layout, *, suffix: str = "T1w", participants=(), sessions=(), filters=None) -> list[ImageJob]:
    """Every NIfTI image with ``suffix`` for the selected participants and sessions.

    ``filters`` is a parsed ``--bids-filter-file``; the entry under ``suffix.lower()`` (e.g.
    ``"t1w"``) is applied. Raises :class:`InputError` listing existing labels for unknown
    participants or sessions, naming each explicitly requested subject that has no image, and
    when nothing at all matches. Subjects without an image are skipped with a warning when no
    participant was named.
    """
    root = Path(layout.root)
    existing = sorted(layout.get_subjects())
    unknown = [p for p in participants if p not in existing]
    if unknown:
        raise InputError(f"{root}: participant label(s) {', '.join(unknown)} not found; "
                         f"existing: {', '.join(existing)}")
    subjects = list(participants) or existing
    if sessions:
        known = sorted(layout.get_sessions(subject=subjects))
        missing = [s for s in sessions if s not in known]
        if missing:
            raise InputError(f"{root}: session label(s) {', '.join(missing)} not found for the selected "
                             f"participants; existing: {', '.join(known) or 'none (no sessions)'}")
    query = {"suffix": suffix, "extension": NIFTI_EXT, "datatype": "anat", "subject": subjects}
    if sessions:
        query["session"] = list(sessions)
    for key, value in ((filters or {}).get(suffix.lower()) or {}).items():
        if key in ("suffix", "extension"):
            continue
        query[key] = _query_value(value)
    try:
        files = layout.get(return_type="object", **query)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{root}: bad BIDS filter ({exc})") from exc
    images, by_output = [], {}
    carried = carried_entities(suffix)
    for f in sorted(files, key=lambda f: f.path):
        keep = file_entities(f, carried)
        key = tuple(sorted((k, str(v)) for k, v in keep.items()))
        if key in by_output:
            raise InputError(f"{by_output[key]} and {f.path} would write the same outputs (their file "
                             f"names differ only in what BIDS does not allow for {suffix} outputs: "
                             f"{', '.join(carried)}); remove one or select one with --bids-filter-file")
        by_output[key] = f.path
        keep.update(suffix=suffix, datatype="anat")
        images.append(ImageJob(path=f.path, entities=keep))
    found = {im.subject for im in images}
    lacking = [s for s in subjects if s not in found]
    if lacking and participants:
        have = sorted({str(f.get_entities().get("suffix")) for f in layout.get(subject=lacking, extension=NIFTI_EXT, return_type="object")})
        raise InputError(f"{root}: no {suffix} image for sub-{', sub-'.join(lacking)} "
                         f"(images found there: {', '.join(have) or 'none'})")
    if not images:
        raise InputError(f"{root}: no {suffix} images match the selection (subjects "
                         f"{', '.join(subjects)}{'; sessions ' + ', '.join(sessions) if sessions else ''})")
    for s in lacking:
        LOG.warning("sub-%s: no %s image; skipped", s, suffix)
    return images


def reference_roots(bids_dir, output_dir, explicit=None) -> list[Path]:
    """Derivative datasets to search for reference ``dseg`` files: ``explicit`` alone when
    given, else every folder of ``BIDS_DIR/derivatives`` with a ``dataset_description.json``
    (the output folder excluded)."""
    if explicit is not None:
        explicit = Path(explicit)
        if not (explicit / "dataset_description.json").is_file():
            raise InputError(f"{explicit}: reference derivatives lack dataset_description.json")
        return [explicit]
    deriv = Path(bids_dir) / "derivatives"
    if not deriv.is_dir():
        return []
    out = Path(output_dir).resolve()
    roots = []
    for d in sorted(deriv.iterdir()):
        if d.is_dir() and d.resolve() != out and (d / "dataset_description.json").is_file():
            roots.append(d)
        elif d.is_dir() and d.resolve() != out:
            LOG.warning("%s: no dataset_description.json; not searched for reference labels", d)
    return roots


def attach_references(images: list[ImageJob], roots: list[Path], *, required: bool = False) -> list[ImageJob]:
    """Return ``images`` with ``reference`` set to a matching ``*_dseg.nii[.gz]`` found in
    ``roots`` (same subject and session; every other entity of the image equal where the
    reference names it; among several, ``desc-reference`` first, then by path).

    With ``required`` (an explicit ``--reference-derivatives``) every dseg there is a candidate
    and a root without any dseg is an error. Otherwise (datasets found under
    ``BIDS_DIR/derivatives``, e.g. an fMRIPrep tissue segmentation or an earlier l2s-pipelines
    output) only ``desc-reference`` files are: the others are skipped, with one warning per folder.
    """
    from bids import BIDSLayout

    subjects = sorted({im.subject for im in images})
    candidates: list = []
    for root in roots:
        try:
            layout = BIDSLayout(str(root), validate=False, is_derivative=True,
                                indexer=safe_indexer(root, validate=False))
        except Exception as exc:
            raise InputError(f"{root}: cannot index reference derivatives ({str(exc).splitlines()[0]})") from exc
        files = layout.get(suffix="dseg", extension=NIFTI_EXT, subject=subjects, return_type="object")
        if required and not layout.get(suffix="dseg", extension=NIFTI_EXT):
            raise InputError(f"{root}: no *_dseg.nii[.gz] files in the reference derivatives")
        if not required:
            skipped = [f for f in files if f.get_entities().get("desc") != REFERENCE_DESC]
            if skipped:
                LOG.warning("%s: %d dseg file(s) without desc-%s (e.g. %s) not used as reference labels; "
                            "pass --reference-derivatives %s to score against them", root, len(skipped),
                            REFERENCE_DESC, Path(skipped[0].path).name, root)
            files = [f for f in files if f.get_entities().get("desc") == REFERENCE_DESC]
        candidates.extend(f for f in files if f.get_entities().get("space") in (None, "orig", "T1w"))
    by_subject: dict[tuple, list] = {}
    for f in candidates:
        e = f.get_entities()
        by_subject.setdefault((str(e["subject"]), str(e.get("session", ""))), []).append(f)
    out = []
    for im in images:
        names = [k for k in carried_entities(im.entities.get("suffix", "T1w")) if k not in ("subject", "session")]
        match = []
        for f in by_subject.get((im.subject, im.session), []):
            e = file_entities(f, names)
            if all(str(v) == str(im.entities.get(k)) for k, v in e.items()):
                match.append(f)
        match.sort(key=lambda f: (f.get_entities().get("desc") != REFERENCE_DESC, f.path))
        out.append(ImageJob(path=im.path, entities=im.entities, reference=match[0].path if match else ""))
    return out

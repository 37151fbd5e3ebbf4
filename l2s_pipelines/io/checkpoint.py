"""Model packages: a folder with ``manifest.json`` and ``model.safetensors``.

The manifest schema is documented in ``docs/DEVELOPING.md``. Weights are stored as
safetensors only, so loading a package never unpickles anything; the file's sha256 is recorded
in ``manifest["weights"]["sha256"]`` and verified on every load.

``read_manifest`` and ``default_model_dir`` do not import torch (the BIDS app's main process
reads manifests before its worker pool forks); torch is imported inside the functions that need
it.

Training checkpoints (optimizer state, step counters) use the same two-file layout through
:func:`save_tensors` / :func:`load_tensors`: a flat ``dict[str, Tensor]`` in safetensors plus a
JSON sidecar for plain values.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from l2s_pipelines.errors import ModelError
from l2s_pipelines.io.manifest_checks import check_manifest_values, check_weights_entry
from l2s_pipelines.system import atomic_write_bytes

#: Largest accepted manifest and safetensors header (bytes; safetensors' own header limit).
MAX_MANIFEST_BYTES = 16 << 20
MAX_HEADER_BYTES = 100_000_000

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "l2s-model/1"
REQUIRED_KEYS = ("format", "name", "architecture", "labels", "preprocessing", "inference", "weights")


def default_model_dir() -> Path:
    """Path of the model package bundled with the library (``l2s_pipelines/models/default``).

    Raises :class:`ModelError` when the bundled package is absent (e.g. a source checkout in
    which no model has been trained and installed yet).
    """
    path = Path(__file__).resolve().parent.parent / "models" / "default"
    if not (path / MANIFEST_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise ModelError(
            f"{path}: the bundled default model package is missing ({MANIFEST_NAME} and "
            f"{WEIGHTS_NAME} expected); pass a model package folder explicitly or reinstall")
    return path


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks of ``chunk_bytes``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and check the manifest of a model package (cheap: JSON only, no torch).

    Checks that the folder and manifest exist, that the JSON parses, that the required keys
    are present, the format is ``l2s-model/1``, that ``architecture.out_channels`` equals the
    number of labels and that every size and name is within the bounds of
    :mod:`l2s_pipelines.io.manifest_checks` (before anything is built). Raises
    :class:`ModelError` naming the file otherwise; the message never quotes the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: model package folder does not exist")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ModelError(f"{path}: model package has no {MANIFEST_NAME}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ModelError(f"{path}: manifest is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: manifest is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"{path}: manifest is not valid JSON (not UTF-8 text, or nested too deeply)") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"{path}: manifest must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelError(f"{path}: manifest lacks required keys {missing}")
    if manifest["format"] != FORMAT:
        raise ModelError(f"{path}: unsupported model format {manifest['format']!r} (expected {FORMAT!r})")
    check_labels(manifest, path)
    check_manifest_values(manifest, path)
    return manifest


def weights_path(directory: str | os.PathLike, manifest: dict) -> Path:
    """The weights file of a package: ``manifest["weights"]["file"]``, a plain file name inside
    ``directory`` (checked by :func:`read_manifest`; a symlink leading out of the folder is
    refused here). Raises :class:`ModelError` before the file is opened."""
    directory = Path(directory)
    check_weights_entry(manifest.get("weights"), directory / MANIFEST_NAME)
    path = directory / manifest["weights"].get("file", WEIGHTS_NAME)
    if Path(os.path.realpath(path)).parent != Path(os.path.realpath(directory)):
        raise ModelError(f"{path}: weights file leads outside the model package folder {directory}")
    return path


def check_labels(manifest: dict, where: str | os.PathLike) -> None:
    """Check the label list: entries with integer ``index`` and ``name``, unique values, and
    ``len(labels) == architecture.out_channels``. Raises :class:`ModelError` naming ``where``."""
    labels = manifest.get("labels")
    if isinstance(labels, dict) and "labels" in labels:  # LabelTable.to_dict() nested form
        labels = labels["labels"]
    if not isinstance(labels, list) or not labels:
        raise ModelError(f"{where}: manifest 'labels' must be a non-empty list")
    try:
        values = [int(lab["index"]) for lab in labels]
        if not all(isinstance(lab["name"], str) for lab in labels):
            raise ValueError("label names must be strings")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: every label needs an integer 'index' and a 'name' ({exc})") from exc
    if len(set(values)) != len(values):
        raise ModelError(f"{where}: duplicate label values in manifest 'labels'")
    out = manifest.get("architecture", {}).get("out_channels")
    if out != len(labels):
        raise ModelError(f"{where}: label set incompatible with the network: architecture.out_channels"
                         f" = {out} but the manifest lists {len(labels)} labels")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, fsync=True)


def _versions() -> dict:
    import safetensors
    import torch

    import l2s_pipelines
    return {"l2s_pipelines": l2s_pipelines.__version__, "torch": torch.__version__,
            "safetensors": safetensors.__version__}


def save_model_package(directory: str | os.PathLike, model: Any, manifest: dict) -> Path:
    """Write ``model`` (an ``nn.Module``) and ``manifest`` as a model package folder.

    Fills ``manifest["weights"] = {"file", "sha256"}`` and ``manifest["versions"]``, sets
    ``format`` and, for a :class:`~l2s_pipelines.nn.unet.UNet`, ``architecture`` from the model's
    config when absent. Both files are written under temporary names and renamed, weights first,
    so a reader never sees a manifest whose sha256 does not match. Returns the folder path.
    """
    from safetensors.torch import save as st_save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(json.dumps(manifest))  # deep copy, and proves it is JSON-serialisable
    manifest.setdefault("format", FORMAT)
    if "architecture" not in manifest and hasattr(getattr(model, "config", None), "to_dict"):
        manifest["architecture"] = model.config.to_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = st_save(state, metadata={"format": FORMAT})
    manifest["weights"] = {"file": WEIGHTS_NAME, "sha256": hashlib.sha256(blob).hexdigest()}
    manifest["versions"] = _versions()
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelError(f"{directory / MANIFEST_NAME}: manifest lacks required keys {missing}")
    check_labels(manifest, directory / MANIFEST_NAME)
    _atomic_write_bytes(directory / WEIGHTS_NAME, blob)
    _atomic_write_bytes(directory / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return directory


def check_safetensors_file(path: Path) -> dict:
    """Parse a safetensors header and check the file is complete; returns the header dict.

    Raises :class:`ModelError` naming ``path`` when the file is missing, truncated (shorter than
    its header declares) or has trailing bytes, or the header is unreadable.
    """
    if not path.is_file():
        raise ModelError(f"{path}: weights file is missing (or not a regular file)")
    size = path.stat().st_size
    not_st = f"{path}: weights file is not a safetensors file"
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"{path}: weights file is truncated ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise ModelError(f"{not_st} (its header length field is out of range)")
        if n > size - 8:
            raise ModelError(f"{path}: weights file is truncated (its header runs past the end of the "
                             f"{size}-byte file)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelError(f"{not_st} (its header is not JSON)") from exc
    if not isinstance(header, dict):
        raise ModelError(not_st)
    for key, v in header.items():
        if key == "__metadata__":
            continue
        if (not isinstance(v, dict) or not isinstance(v.get("dtype"), str)
                or not isinstance(v.get("shape"), list) or not all(_nonneg_int(s) for s in v["shape"])
                or not isinstance(v.get("data_offsets"), list) or len(v["data_offsets"]) != 2
                or not all(_nonneg_int(o) for o in v["data_offsets"])
                or v["data_offsets"][0] > v["data_offsets"][1]):
            raise ModelError(f"{not_st} (a tensor entry lacks a dtype, shape or data_offsets)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        what = "truncated" if 8 + n + end > size else "longer than its header declares"
        raise ModelError(f"{path}: weights file is {what} (expected {8 + n + end} bytes, found {size})")
    return header


def _nonneg_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_model_package(directory: str | os.PathLike, device: Any = "cpu"):
    """Load a model package; returns ``(model in eval mode on device, manifest)``.

    Never unpickles: weights are read with safetensors only. Checks, each raising
    :class:`ModelError` naming the offending file: manifest (see :func:`read_manifest`), weights
    file present and complete, sha256 equal to the manifest's, and the stored tensors match the
    architecture exactly (same names and shapes).
    """
    from safetensors.torch import load as st_load

    from l2s_pipelines.nn.unet import build_unet

    directory = Path(directory)
    manifest = read_manifest(directory)
    wpath = weights_path(directory, manifest)
    header = check_safetensors_file(wpath)
    blob = wpath.read_bytes()
    expected = manifest["weights"].get("sha256")
    actual = hashlib.sha256(blob).hexdigest()
    if not expected:
        raise ModelError(f"{directory / MANIFEST_NAME}: manifest has no weights.sha256")
    if actual != expected:
        raise ModelError(f"{wpath}: sha256 mismatch, the weights file is corrupt or was replaced "
                         f"(manifest {expected[:12]}..., file {actual[:12]}...)")
    try:
        import torch

        with torch.device("meta"):  # shapes only: nothing allocated before they are compared
            want = {k: tuple(v.shape) for k, v in build_unet(manifest["architecture"]).state_dict().items()}
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"{directory / MANIFEST_NAME}: bad architecture ({exc})") from exc
    have = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise ModelError(f"{wpath}: tensors do not match the manifest's architecture "
                         f"(differences in {diff[:5]}{'...' if len(diff) > 5 else ''})")
    try:
        state = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{wpath}: weights file is unreadable ({type(exc).__name__})") from exc
    model = build_unet(manifest["architecture"])
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), manifest


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """Save a flat ``dict[str, Tensor]`` to ``path`` (safetensors) and ``metadata`` (plain
    JSON values) to ``path + '.json'``, both atomically. For training checkpoints."""
    from safetensors.torch import save as st_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    meta = {"metadata": metadata or {}, "sha256": hashlib.sha256(blob).hexdigest()}
    _atomic_write_bytes(path, blob)
    _atomic_write_bytes(path.with_name(path.name + ".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return path


def load_tensors(path: str | os.PathLike, device: Any = "cpu") -> tuple[dict, dict]:
    """Inverse of :func:`save_tensors`: returns ``(tensors, metadata)``; sha256 checked."""
    from safetensors.torch import load as st_load

    path = Path(path)
    side = path.with_name(path.name + ".json")
    check_safetensors_file(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{side}: checkpoint metadata unreadable ({exc})") from exc
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise ModelError(f"{path}: sha256 mismatch, the checkpoint is corrupt")
    tensors = {k: v.to(device) for k, v in st_load(blob).items()}
    return tensors, meta.get("metadata", {})

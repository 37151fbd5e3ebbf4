"""Provenance recorded in ``dataset_description.json`` and every sidecar: library versions and
the container the run happens in (from the environment; nothing is probed on disk).

Container variables: ``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER`` (set by the runtimes
inside an image), or ``L2S_CONTAINER_URI`` (+ ``L2S_CONTAINER_TYPE``, default docker);
``L2S_CONTAINER_DIGEST`` or ``L2S_CONTAINER_TAG`` adds the image digest or tag.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from l2s_pipelines import __version__


def software_versions(extra: dict | None = None) -> dict:
    """Versions of this package, Python and the libraries that shape results (from package
    metadata: torch is not imported). ``extra`` (e.g. what a task measured) overrides."""
    from importlib import metadata

    versions = {"l2s_pipelines": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "nibabel", "pydra"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions.update(extra or {})
    return versions


def code_url() -> str:
    """BIDS ``CodeURL`` of ``GeneratedBy``: ``L2S_CODE_URL`` when set (e.g. by a container
    build), else the package's ``Source``/``Repository``/``Homepage`` project URL from its
    metadata, else the ``file://`` URI of the installed package folder (the code that ran)."""
    from importlib import metadata

    if os.environ.get("L2S_CODE_URL"):
        return os.environ["L2S_CODE_URL"]
    try:
        meta = metadata.metadata("l2s-pipelines")
        urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [] if ", " in u)
    except metadata.PackageNotFoundError:
        urls = {}
    for key in ("Source", "Repository", "Homepage"):
        if urls.get(key):
            return urls[key]
    return Path(__file__).resolve().parent.parent.as_uri()


def detect_container() -> dict | None:
    """Container identity from the environment (Apptainer/Singularity, or L2S_CONTAINER_*):
    a BIDS ``Container`` object (``Type``, ``URI``, ``Tag``) or None outside a container."""
    uri = os.environ.get("L2S_CONTAINER_URI")
    for var, kind in (("APPTAINER_CONTAINER", "apptainer"), ("SINGULARITY_CONTAINER", "singularity")):
        if not uri and os.environ.get(var):
            uri, ctype = os.environ[var], kind
            break
    else:
        ctype = os.environ.get("L2S_CONTAINER_TYPE", "docker")
    tag = os.environ.get("L2S_CONTAINER_DIGEST") or os.environ.get("L2S_CONTAINER_TAG")
    if not uri and not tag:
        return None
    container = {"Type": ctype}
    if uri:
        container["URI"] = uri if "://" in uri else Path(uri).absolute().as_uri()
    if tag:
        container["Tag"] = tag
    return container

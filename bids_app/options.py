"""Run options of ``l2s-bids``: a frozen dataclass built from parsed arguments, kept apart from
running so that tests and other front ends can build one directly.

No numpy or torch import here: the CLI sets thread variables before those load.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from l2s_pipelines.errors import InputError
from l2s_pipelines.system import cpu_allocation as available_cpus  # noqa: F401 (CLI name)

INPUT_SUFFIXES = ("T1w", "T2w", "FLAIR", "PDw")
PLUGINS = ("cf", "debug", "slurm", "sge", "dask")
#: Plugins that submit jobs to a scheduler (``--cluster-jobs`` applies to them).
CLUSTER_PLUGINS = ("slurm", "sge", "dask")
#: Bounds of a ``--bids-filter-file``: its size and the values one entity may list.
MAX_FILTER_BYTES, MAX_FILTER_VALUES = 1 << 20, 10_000
_MEM_UNITS = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


@dataclass(frozen=True)
class RunOptions:
    """Everything one ``l2s-bids`` invocation needs (paths absolute, labels without prefixes).

    Threads and memory (nipreps' meanings, see :func:`resolve_threads`): ``nprocs`` is the most
    threads of the whole run (``--nprocs/--nthreads/--n_cpus``), ``omp_nthreads`` the threads of
    one image (torch intra-op threads), ``parallel_images`` the images processed at once
    (``parallel_images * omp_nthreads <= nprocs``); ``mem_mb`` (MiB, None: no bound) is shared
    by the parallel images.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict = field(default_factory=dict)
    nprocs: int = 1
    omp_nthreads: int = 1
    parallel_images: int = 1
    mem_mb: int | None = None
    skip_bids_validation: bool = False
    stop_on_first_crash: bool = False
    reports_only: bool = False
    boilerplate_only: bool = False
    random_seed: int = 0
    verbosity: int = 0
    model_dir: Path | None = None
    device: str = "auto"
    reference_derivatives: Path | None = None
    input_suffix: str = "T1w"
    save_probseg: bool = False
    plugin: str = "cf"
    plugin_args: dict = field(default_factory=dict)
    cluster_jobs: str = "image"
    output_spaces: tuple[str, ...] = ()

    def job_per_image(self, images_at_once: int) -> bool:
        """Whether each image of a batch of ``images_at_once`` runs as one job (Pydra task):
        ``--cluster-jobs image`` on a cluster worker, and on the local ``cf`` worker whenever
        the batch holds more images than run at once (``parallel_images``). Locally this runs
        the images depth first: each is segmented, measured, drawn and published before the
        pool takes the next one, instead of every segmentation first and every result at the
        end; with no more images than slots, per-task jobs let an image's checks, measures and
        figures run beside each other instead."""
        if self.plugin in CLUSTER_PLUGINS:
            return self.cluster_jobs == "image"
        return self.plugin == "cf" and images_at_once > self.parallel_images

    @property
    def logs_dir(self) -> Path:
        return self.output_dir / "logs"

    @property
    def job_mem_mb(self) -> int:
        """Memory budget of one image job in MiB: ``mem_mb`` shared by the ``parallel_images``
        jobs (0 = no bound given: each job sizes itself from the available memory)."""
        return (self.mem_mb or 0) // max(1, self.parallel_images)


def resolve_threads(cpus: int, nthreads: int | None = None, omp_nthreads: int | None = None,
                    parallel_images: int | None = None) -> tuple[int, int, int]:
    """``(nthreads, omp_nthreads, parallel_images)`` from the options given (None: not given).

    - ``nthreads`` N (``--nprocs/--nthreads/--n_cpus``, as in nipreps): the most threads of the
      whole run; default ``cpus``, the CPUs of the allocation.
    - ``omp_nthreads`` T: threads of one image; default ``N // P`` when P is given, else 1.
    - ``parallel_images`` P: images processed at once; default ``N // T``.

    ``P * T <= N`` always (at most N threads run), and each image gets ``--mem / P``. Raises
    :class:`InputError` for a value below 1 or ``P * T > N``.
    """
    n = cpus if nthreads is None else nthreads
    for name, value in (("--nthreads", n), ("--omp-nthreads", omp_nthreads), ("--parallel-images", parallel_images)):
        if value is not None and value < 1:
            raise InputError(f"{name} {value}: must be at least 1")
    if omp_nthreads is None:
        omp_nthreads = max(1, n // parallel_images) if parallel_images is not None else 1
    if parallel_images is None:
        parallel_images = max(1, n // omp_nthreads)
    if parallel_images * omp_nthreads > n:
        raise InputError(f"--parallel-images {parallel_images} x --omp-nthreads {omp_nthreads} = "
                         f"{parallel_images * omp_nthreads} threads exceed --nthreads {n} (the most "
                         "threads of the whole run)")
    return n, omp_nthreads, parallel_images


def parse_mem(text: str | None) -> int | None:
    """``"8000"``, ``"8G"``, ``"512MB"``, ``"16gb"`` -> MiB (int). No unit means MB."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", str(text))
    if not m:
        raise InputError(f"--mem {text!r}: expected digits with an optional unit (K, M, G, T)")
    return max(1, int(float(m.group(1)) * _MEM_UNITS[m.group(2).lower()]))


def strip_prefix(labels, prefix: str) -> tuple[str, ...]:
    """Drop an optional ``sub-``/``ses-`` prefix from each label; keep order, drop duplicates."""
    out: list[str] = []
    for lab in labels or ():
        lab = str(lab).strip()
        if lab.startswith(prefix):
            lab = lab[len(prefix):]
        if not re.fullmatch(r"[A-Za-z0-9]+", lab):
            raise InputError(f"label {prefix}{lab!r}: BIDS labels are alphanumeric")
        if lab not in out:
            out.append(lab)
    return tuple(out)


def load_filter_file(path: str | os.PathLike | None) -> dict:
    """Read a ``--bids-filter-file``: JSON ``{query: {entity: value}}``. ``null`` means the entity
    must be absent and ``"*"`` any value (both translated to pybids' ``Query`` at query time)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        if not path.is_file():
            raise InputError(f"{path}: BIDS filter file does not exist or is not a regular file")
        if path.stat().st_size > MAX_FILTER_BYTES:
            raise InputError(f"{path}: BIDS filter file is larger than {MAX_FILTER_BYTES >> 10} KiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the BIDS filter file ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: BIDS filter file is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    except (UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: BIDS filter file is not valid JSON (not UTF-8 text, or nested too deeply)") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"{path}: BIDS filter file must map query names to {{entity: value}} objects")
    name = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
    for query, entities in data.items():
        if not name.fullmatch(query):
            raise InputError(f"{path}: BIDS filter file: query names are letters, digits and '_' (e.g. \"t1w\")")
        for entity, value in entities.items():
            if not name.fullmatch(entity):
                raise InputError(f"{path}: BIDS filter {query!r}: entity names are letters, digits and '_'")
            values = value if isinstance(value, list) else [value]
            if len(values) > MAX_FILTER_VALUES or not all(
                    v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
                raise InputError(f"{path}: BIDS filter {query!r}: {entity!r} must be a string, an integer, null, "
                                 f"or a list of at most {MAX_FILTER_VALUES} of them")
    return data


def parse_plugin_args(items) -> dict:
    """``--plugin-args``: one JSON object, or ``key=value`` words (values parsed as JSON when
    they parse, e.g. numbers and booleans, else kept as strings)."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [items]
    text = " ".join(items).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"--plugin-args: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise InputError("--plugin-args: JSON must be an object")
        return data
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--plugin-args: {item!r} is not key=value")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def real_path(path: str | os.PathLike) -> Path:
    """Absolute path with ``~``, symlinks and ``..`` resolved (missing tails kept as given)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def check_paths(opts: RunOptions) -> None:
    """Dataset-level path checks, before anything is written. Raises :class:`InputError`.

    Every check compares real paths (symlinks and ``..`` resolved, :func:`real_path`), so an
    output or work folder reached through a symlink into the dataset is refused like the
    folder itself. The work folder must be provably l2s-bids' own
    (:func:`~l2s_pipelines.workflows.execution.check_work_dir`)."""
    from l2s_pipelines.workflows.execution import check_work_dir

    bids, out, work = (real_path(p) for p in (opts.bids_dir, opts.output_dir, opts.work_dir))
    if not bids.is_dir():
        raise InputError(f"{opts.bids_dir}: input BIDS folder does not exist")
    if out == bids or out in bids.parents:
        raise InputError(f"{opts.output_dir}: output folder must differ from the input BIDS folder {bids} "
                         "and must not contain it")
    if bids in out.parents and "derivatives" not in out.relative_to(bids).parts:
        raise InputError(f"{opts.output_dir}: output inside the input BIDS folder {bids} must sit under derivatives/")
    if work == bids or bids in work.parents:
        raise InputError(f"{opts.work_dir}: work folder must not be inside the input BIDS folder {bids}")
    if work == out or work in bids.parents or work in out.parents:
        raise InputError(f"{opts.work_dir}: work folder must not be the output folder nor contain the input "
                         "or output folder")
    for path, what in ((out, "output"), (work, "work")):
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise InputError(f"{path}: {what} folder cannot be written ({probe} is not a writable folder)")
    check_work_dir(work)
    _check_no_escaping_links(out)
    if opts.model_dir is not None and not opts.model_dir.is_dir():
        raise InputError(f"{opts.model_dir}: model package folder does not exist")
    if opts.reference_derivatives is not None and not opts.reference_derivatives.is_dir():
        raise InputError(f"{opts.reference_derivatives}: reference derivatives folder does not exist")


def _check_no_escaping_links(out: Path) -> None:
    """Refuse an existing output folder holding a symlinked folder that leads outside it
    (outputs written there would land elsewhere, e.g. in the input dataset)."""
    for root, dirs, _ in os.walk(out, followlinks=False):
        for d in dirs:
            link = Path(root) / d
            if link.is_symlink() and out not in real_path(link).parents:
                raise InputError(f"{link}: symlinked folder inside the output folder leads outside it "
                                 f"(to {real_path(link)}); outputs are never written through it")

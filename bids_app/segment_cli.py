"""``l2s-segment``: segment plain NIfTI files, no BIDS needed (like SynthSeg's ``mri_synthseg``).

::

    l2s-segment INPUT [INPUT ...] -o OUTPUT [--volumes CSV] [--qc CSV] [--posteriors] [--resample]
                [--model DIR] [--threads N] [--device auto|cpu|cuda|cuda:N] [--mem MEM]

``INPUT``: NIfTI files (``.nii``, ``.nii.gz``) or folders (their NIfTI files, not recursive).
``OUTPUT``: a folder, or with a single input a file name ending in ``.nii[.gz]``. For an input
``<name>.nii.gz`` the folder gets (``<base>`` = ``OUTPUT/<name>``; with a file ``OUTPUT`` the
label map is ``OUTPUT`` itself and ``<base>`` its name without ``.nii[.gz]`` and ``_dseg``)::

    <base>_dseg.nii.gz                 int16 label values (input grid; model grid with --resample)
    <base>_dseg.tsv                    look-up table of the labels present
    <base>_desc-volumes_morph.tsv      hard and soft volume per label, mm^3 (+ .json dictionary)
    <base>_desc-qc_stats.tsv           automated QC flags (+ .json dictionary)
    <base>_probseg.nii.gz              4D posteriors, with --posteriors
    <base>_resampled.nii.gz            the input on the model grid, with --resample
    <base>_dseg.json                   sources, model, device, threads; written last

The same :class:`~l2s_pipelines.inference.Segmenter`, measures
(:func:`~l2s_pipelines.workflows.segment_files.segment_to_folder`) and writers as ``l2s-bids``
(:mod:`.tables`, :mod:`.derivatives`): each image is computed in a hidden staging folder and its
files are moved into place atomically, the sidecar last, so a failed or killed image never
leaves a half-written file. A failing input is reported on one line (``l2s-segment: error:
FILE: problem``) and the others go on. ``--volumes`` and ``--qc`` write one CSV row per image
segmented by this run.

Exit codes (those of ``l2s-bids``): 0 every image segmented; 2 bad arguments, no input image or
an unusable model (nothing processed); 3 some images failed (or a ``--volumes``/``--qc`` CSV could
not be written); 4 every image failed.

Example
-------
>>> main(["scans/", "-o", "segs/", "--volumes", "segs/volumes.csv", "--threads", "2"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from l2s_pipelines.bids_app.cli import (EXIT_ALL_FAILED, EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED, _Parser,
                                        set_thread_env)

PROG = "l2s-segment"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def build_parser() -> argparse.ArgumentParser:
    from l2s_pipelines import __version__

    p = _Parser(prog=PROG, description="Segment brain MRI NIfTI files into the 33 SynthSeg labels "
                "(no BIDS needed). Exit codes: 0 ok, 2 bad arguments, no input or unusable model, "
                "3 some images failed, 4 all images failed.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="NIfTI files (.nii, .nii.gz) or folders of them (not recursive)")
    p.add_argument("-o", "--output", "--o", type=Path, required=True, metavar="OUTPUT",
                   help="output folder, or for one input a file name ending in .nii or .nii.gz")
    p.add_argument("--volumes", "--vol", type=Path, metavar="CSV",
                   help="CSV with one row per image: TIV and the soft volume of every label in mm^3")
    p.add_argument("--qc", type=Path, metavar="CSV",
                   help="CSV with one row per image: flagged QC measures and every QC value")
    p.add_argument("--posteriors", "--post", action="store_true",
                   help="also write the 4D posteriors (<name>_probseg.nii.gz)")
    p.add_argument("--resample", action="store_true",
                   help="segment on the model grid (RAS, the model's voxel size) and write the resampled "
                        "input beside the labels; every output is then on that grid")
    p.add_argument("--model", type=Path, help="model package folder (default: the bundled model)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: the CPUs of the allocation)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: the GPU if any)")
    p.add_argument("--mem", metavar="MEM", help="memory budget, e.g. 8G (MB if no unit; default: from the "
                   "free memory)")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def _stem(path: Path) -> str:
    name = path.name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def collect_inputs(paths) -> tuple[list[Path], list[tuple[str, str]]]:
    """NIfTI files named by ``paths`` (files, or folders: their ``*.nii[.gz]`` files, sorted)
    and ``(path, problem)`` for the paths that are not usable."""
    files, bad = [], []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_EXTENSIONS))
            if not found:
                bad.append((str(path), "folder holds no .nii or .nii.gz file"))
            files += found
        elif not path.exists():
            bad.append((str(path), "no such file or folder"))
        elif not path.name.endswith(NIFTI_EXTENSIONS):
            bad.append((str(path), "not a NIfTI file (.nii or .nii.gz expected)"))
        else:
            files.append(path)
    return files, bad


def output_bases(files: list[Path], output: Path, folders=()) -> dict[Path, tuple[Path, Path]]:
    """``{input: (dseg path, base)}``; raises InputError when two inputs would write the same
    names, a file OUTPUT is given for several inputs, an output would replace an input, or the
    output folder is one of the input ``folders`` (a rerun would segment the outputs)."""
    from l2s_pipelines.errors import InputError

    out = _output_bases(files, output)
    resolved = {f.resolve() for f in files}
    for dseg, base in out.values():
        for path in (dseg, _with(base, "_probseg.nii.gz"), _with(base, "_resampled.nii.gz")):
            if path.resolve() in resolved:
                raise InputError(f"{path}: is an input and would be overwritten; choose another -o")
    for folder in folders:
        if folder.resolve() == output.resolve():
            raise InputError(f"{output}: is also an input folder; write the outputs to another folder "
                             "(a rerun would segment them)")
    return out


def _output_bases(files: list[Path], output: Path) -> dict[Path, tuple[Path, Path]]:
    from l2s_pipelines.errors import InputError

    if output.name.endswith(NIFTI_EXTENSIONS) and not output.is_dir():
        if len(files) != 1:
            raise InputError(f"{output}: an output file name takes exactly one input ({len(files)} "
                             "found); give a folder instead")
        stem = _stem(output)
        base = output.with_name(stem[: -len("_dseg")] if stem.endswith("_dseg") else stem)
        return {files[0]: (output, base)}
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder")
    out, seen = {}, {}
    for f in files:
        stem = _stem(f)
        if stem in seen:
            raise InputError(f"{seen[stem]} and {f}: both would write {output / stem}_dseg.nii.gz; "
                             "segment them into separate output folders")
        seen[stem] = f
        out[f] = (output / f"{stem}_dseg.nii.gz", output / stem)
    return out


def _with(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def publish(staged: Path, *, source: Path, dseg: Path, base: Path) -> dict[str, Path]:
    """Move the staged result folder's files to their names, each atomically and the sidecar
    last; when one fails, the files of this image already written are removed again."""
    info = json.loads((staged / "info.json").read_text())
    sidecar = dseg.with_name(_stem(dseg) + ".json")
    sidecar.unlink(missing_ok=True)  # the outputs are complete only once it is rewritten
    written: dict[str, Path] = {}
    try:
        _publish_files(staged, info, source=source, dseg=dseg, base=base, written=written)
    except BaseException:  # an image has all its outputs or none: no mixed set is left behind
        for path in written.values():
            path.unlink(missing_ok=True)
            if path.suffix == ".tsv":
                path.with_suffix(".json").unlink(missing_ok=True)
        raise
    return written


def _publish_files(staged: Path, info: dict, *, source: Path, dseg: Path, base: Path, written: dict) -> None:
    from l2s_pipelines import __version__
    from l2s_pipelines.bids_app import tables
    from l2s_pipelines.bids_app.derivatives import (PIPELINE_NAME, atomic_copy, atomic_write_text,
                                                    model_entry, write_json)
    from l2s_pipelines.bids_app.provenance import code_url, software_versions

    tsv_text, _ = tables.lookup_table_tsv(staged / "dseg.nii.gz", info["labels"])
    written["dseg_tsv"] = atomic_write_text(dseg.with_name(_stem(dseg) + ".tsv"), tsv_text)
    written["dseg"] = atomic_copy(staged / "dseg.nii.gz", dseg, move=True)
    for kind, suffix in (("probseg", "_probseg.nii.gz"), ("resampled", "_resampled.nii.gz")):
        if (staged / f"{kind}.nii.gz").is_file():
            written[kind] = atomic_copy(staged / f"{kind}.nii.gz", _with(base, suffix), move=True)
    written["volumes"] = tables.write_table(tables.read_tsv(staged / "volumes.tsv"),
                                            _with(base, "_desc-volumes_morph.tsv"), tables.VOLUMES)
    qc = json.loads((staged / "qc.json").read_text())
    written["qc"] = tables.write_table(tables.qc_frame(qc), _with(base, "_desc-qc_stats.tsv"), tables.QC)
    model = model_entry(info)
    meta = {"Sources": [source.absolute().as_uri()],
            "SpatialReference": written["resampled"].name if "resampled" in written else "orig",
            "Model": model, "Device": info["device"], "Threads": info["threads"],
            "GeneratedBy": [{"Name": PIPELINE_NAME, "Version": __version__, "CodeURL": code_url()}],
            "L2SVersions": software_versions(),
            # as in l2s-bids' sidecars: the model's accuracy note, when it has one
            "Warnings": [info["model_accuracy_warning"]] if info.get("model_accuracy_warning") else []}
    if info.get("probseg_encoding"):
        meta["ProbsegEncoding"] = info["probseg_encoding"]
    written["dseg_json"] = write_json(dseg.with_name(_stem(dseg) + ".json"), meta)


def _csv_text(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="n/a", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _volume_row(source: Path, done: dict) -> dict:
    vols = done["volumes"]
    row = {"input": str(source), "tiv_mm3": round(vols["tiv_mm3"], 3)}
    row.update({r["name"]: round(r["volume_soft_mm3"], 3) for r in vols["rows"] if r["index"] != 0})
    return row


def _qc_row(source: Path, done: dict) -> dict:
    flagged = [f["name"] for f in done["flags"] if f["flagged"]]
    row = {"input": str(source), "n_flagged": len(flagged), "flagged": ";".join(flagged)}
    row.update({f["name"]: "n/a" if f["value"] is None else round(f["value"], 4) for f in done["flags"]})
    return row


def segment_files(files, targets, segmenter, ns, budget) -> tuple[int, list[dict], list[dict]]:
    """Segment every file; returns (number failed, volume rows, QC rows)."""
    from l2s_pipelines.workflows.segment_files import segment_to_folder

    failed, vol_rows, qc_rows = 0, [], []
    for i, source in enumerate(files, 1):
        dseg, base = targets[source]
        t0 = time.perf_counter()
        dseg.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{base.name}.l2s-tmp-", dir=dseg.parent))
        try:
            done = segment_to_folder(segmenter, source, staging, posteriors=ns.posteriors,
                                     resample=ns.resample, budget_bytes=budget)
            publish(staging, source=source, dseg=dseg, base=base)
        except Exception as exc:  # one failing file never stops the others
            failed += 1
            print(f"{PROG}: error: {_message(source, exc)}", file=sys.stderr, flush=True)
            continue
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        vol_rows.append(_volume_row(source, done))
        qc_rows.append(_qc_row(source, done))
        n_flag = qc_rows[-1]["n_flagged"]
        print(f"[{i}/{len(files)}] {source} -> {dseg} ({time.perf_counter() - t0:.1f} s"
              f"{f', {n_flag} QC flag(s)' if n_flag else ''})", flush=True)
    return failed, vol_rows, qc_rows


def _message(source: Path, exc: BaseException) -> str:
    """One line naming the file: the InputError/ModelError message (which names it already),
    else the exception type and text."""
    from l2s_pipelines.errors import InputError, ModelError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError):
        text = "not enough memory (try --mem, fewer --threads or --device cpu)"
    elif not isinstance(exc, (InputError, ModelError)):
        text = f"{type(exc).__name__}: {text}"
    return text if str(source) in text else f"{source}: {text}"


def main(argv=None) -> int:
    """Entry point of ``l2s-segment``; returns the exit code (module docstring)."""
    ns = build_parser().parse_args(argv)
    from l2s_pipelines.bids_app.options import available_cpus, parse_mem
    from l2s_pipelines.errors import InputError, ModelError

    if ns.threads is not None and ns.threads < 1:
        print(f"{PROG}: error: --threads {ns.threads}: must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    threads = ns.threads or available_cpus()
    set_thread_env(threads)  # before numpy/torch start their thread pools
    files, bad = collect_inputs(ns.inputs)
    for path, problem in bad:
        print(f"{PROG}: error: {path}: {problem}", file=sys.stderr)
    try:
        if not files:
            raise InputError("no input image found (give .nii or .nii.gz files or folders of them)")
        targets = output_bases(files, ns.output, [p for p in ns.inputs if p.is_dir()])
        mem_mb = parse_mem(ns.mem) or 0
        from l2s_pipelines.workflows.segment_files import load_segmenter
        from l2s_pipelines.workflows.tasks import memory_budget_bytes

        budget = memory_budget_bytes(mem_mb, threads)
        segmenter = load_segmenter(ns.model, device=ns.device, threads=threads, budget_bytes=budget)
    except (InputError, ModelError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from l2s_pipelines.model_card import accuracy_warning

    note = accuracy_warning(segmenter.manifest)
    if note:  # the same sentence as in the sidecars and in l2s-bids' log and reports
        print(f"{PROG}: warning: {note}", file=sys.stderr, flush=True)
    failed, vol_rows, qc_rows = segment_files(files, targets, segmenter, ns, budget)
    failed += len(bad)
    from l2s_pipelines.bids_app.derivatives import atomic_write_text

    csv_failed = False
    for path, rows in ((ns.volumes, vol_rows), (ns.qc, qc_rows)):
        if path is not None and rows:
            try:
                atomic_write_text(path, _csv_text(rows))
            except OSError as exc:
                print(f"{PROG}: error: {path}: cannot write the table ({exc.strerror or exc})", file=sys.stderr)
                csv_failed = True
    total = len(files) + len(bad)
    if failed:
        print(f"{PROG}: {failed} of {total} input(s) failed (see the errors above)", file=sys.stderr)
    if failed == total:
        return EXIT_ALL_FAILED
    return EXIT_SOME_FAILED if failed or csv_failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""Command line of the ``l2s-bids`` BIDS App (fMRIPrep-compatible options).

``main(argv)`` parses arguments into :class:`~l2s_pipelines.bids_app.options.RunOptions`, sets
the thread variables of BLAS/OpenMP *before* numpy or torch are imported, and hands over to
:func:`l2s_pipelines.bids_app.run.run`. Exit codes: 0 all requested images succeeded; 2 bad
arguments or dataset; 3 some images failed; 4 all images failed; 1 unexpected internal error (a
bug: one line on stderr, the traceback only with ``-vv``).

Example
-------
>>> main(["/data/bids", "/data/bids/derivatives/l2s", "participant",
...       "--participant-label", "01", "--nprocs", "2"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT, EXIT_SOME_FAILED, EXIT_ALL_FAILED = 0, 2, 3, 4
EXIT_INTERNAL = 1
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


class _Parser(argparse.ArgumentParser):
    """argparse with the documented exit code 2 and a one-line error."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _both(name: str) -> list[str]:
    """``--a-b`` plus ``--a_b`` spellings of an option."""
    body = name.lstrip("-")
    dash, under = "--" + body.replace("_", "-"), "--" + body.replace("-", "_")
    return [dash] if dash == under else [dash, under]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``-`` and ``_`` spellings of every long option)."""
    from l2s_pipelines import __version__
    from l2s_pipelines.bids_app.helpfmt import HelpFormatter
    from l2s_pipelines.bids_app.options import INPUT_SUFFIXES, PLUGINS
    from l2s_pipelines.workflows.execution import PLUGIN_ARGS
    from l2s_pipelines.workflows.participant import JOB_GRANULARITIES

    p = _Parser(prog="l2s-bids", description="Brain MRI segmentation with Learn2Synth networks "
                "(a BIDS App). Exit codes: 0 ok, 2 bad arguments or dataset, 3 some images "
                "failed, 4 all images failed, 1 internal error (a bug).",
                formatter_class=HelpFormatter, epilog=EXAMPLES)
    p.add_argument("bids_dir", type=Path, help="input BIDS dataset")
    p.add_argument("output_dir", type=Path, help="output derivatives folder")
    p.add_argument("analysis_level", choices=["participant", "group"],
                   help="participant: segment each image; group: tables and report of all participants")
    g = p.add_argument_group("selection")
    g.add_argument(*_both("--participant-label"), nargs="+", default=[], metavar="LABEL",
                   help="subjects to process, with or without 'sub-' (default: all)")
    g.add_argument(*_both("--session-label"), nargs="+", default=[], metavar="LABEL",
                   help="sessions to process, with or without 'ses-' (default: all)")
    g.add_argument(*_both("--bids-filter-file"), type=Path, metavar="FILE",
                   help="JSON {query: {entity: value}}, the query named after the lower-case input "
                        "suffix (e.g. t1w); null = entity absent, \"*\" = any (default: no filter)")
    g.add_argument(*_both("--input-suffix"), choices=INPUT_SUFFIXES, default="T1w",
                   help="contrast of the input images to segment")
    g.add_argument(*_both("--reference-derivatives"), type=Path, metavar="PATH",
                   help="derivative dataset with reference dseg files for Dice (default: the "
                        "*_desc-reference_dseg files of any dataset under BIDS_DIR/derivatives)")
    g.add_argument(*_both("--skip-bids-validation"), action="store_true",
                   help="index the dataset without validating its file names")
    r = p.add_argument_group("resources")
    r.add_argument("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", dest="nprocs", type=int, metavar="N",
                   help="most threads of the whole run, all images together (as in fMRIPrep) "
                        "(default: the CPUs of the allocation)")
    r.add_argument(*_both("--omp-nthreads"), type=int, metavar="T",
                   help="threads of one image (default: N // P with --parallel-images, else 1)")
    r.add_argument(*_both("--parallel-images"), type=int, metavar="P",
                   help="images processed at once, each with T threads and --mem / P memory; "
                        "P x T must not exceed N (default: N // T)")
    r.add_argument("--mem", "--mem-mb", "--mem_mb", dest="mem",
                   help="memory of the whole run, e.g. 8G (MB if no unit), shared by the parallel images "
                        "(default: none, each image sizes itself from the free memory)")
    r.add_argument("-w", *_both("--work-dir"), type=Path, default=Path("work"),
                   help="Pydra cache folder, outside BIDS_DIR; reruns resume from it")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: the GPU if any)")
    r.add_argument("--plugin", choices=PLUGINS, default="cf", help="Pydra worker (cf: local process pool)")
    r.add_argument(*_both("--plugin-args"), nargs="+", default=[], metavar="ARG",
                   help="worker options, a JSON object or key=value words; per plugin: "
                        + PLUGIN_ARGS.replace("%", "%%"))
    r.add_argument("--cluster-jobs", choices=JOB_GRANULARITIES, default="image",
                   help="with slurm, sge or dask: one scheduler job per image (its check, inference, "
                        "measures, figures and result run inside it, each still cached) or one job per "
                        "task (5 per image: more queue waits, finer resource use); ignored by cf, which runs one "
                        "job per image when more images than --parallel-images are to be processed "
                        "(images then finish and are published one after another), and by debug")
    m = p.add_argument_group("model and outputs")
    m.add_argument("--model", type=Path, help="model package folder (default: bundled model)")
    m.add_argument(*_both("--save-probseg"), action="store_true", help="also write 4D posteriors")
    m.add_argument(*_both("--output-spaces"), nargs="+", default=[], metavar="TEMPLATE",
                   help="TemplateFlow templates to also write the labels in, e.g. MNI152NLin2009cAsym; "
                        "registration is affine only (12 parameters, no nonlinear warp), so template-space "
                        "labels are approximate (default: none; native space is always written)")
    m.add_argument(*_both("--random-seed"), type=int, default=0,
                   help="seed of torch and numpy; with the same input and --omp-nthreads, CPU output is "
                        "bit-identical")
    o = p.add_argument_group("other")
    o.add_argument(*_both("--stop-on-first-crash"), action="store_true",
                   help="run images one by one and stop after the first failure")
    o.add_argument(*_both("--reports-only"), action="store_true",
                   help="only rewrite the HTML reports of finished images")
    o.add_argument(*_both("--boilerplate-only"), action="store_true",
                   help="only write the methods text (logs/CITATION.md)")
    o.add_argument("--notrack", action="store_true", help="accepted; there is no telemetry")
    o.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                   help="more messages: -v progress, -vv debug (default: warnings only)")
    o.add_argument("--version", action="version", version=f"l2s-bids {__version__}")
    return p


EXAMPLES = """examples:
  # every subject, 16 threads in all, 4 per image (so 4 images at once), 32 GB shared
  l2s-bids /data/bids /data/bids/derivatives/l2s-pipelines participant -w /scratch/work \\
      --nprocs 16 --omp-nthreads 4 --mem 32G
  # two subjects on the GPU, with 4D posteriors and Dice against a reference dataset
  l2s-bids /data/bids /out participant --participant-label 01 02 --device cuda:0 \\
      --save-probseg --reference-derivatives /data/bids/derivatives/manual
  # one subject per SLURM array task into one shared output folder (see docs/hpc.md)
  l2s-bids /data/bids /out participant --participant-label "$SUBJECT" -w "$TMPDIR/work" \\
      --nprocs "$SLURM_CPUS_PER_TASK" --omp-nthreads "$SLURM_CPUS_PER_TASK" --skip-bids-validation
  # tables and report of all participants, once the participant level is done
  l2s-bids /data/bids /out group
"""


def options_from_args(ns: argparse.Namespace):
    """Turn parsed arguments into a :class:`RunOptions` (raises ``InputError`` on bad values)."""
    from l2s_pipelines.bids_app import options as o
    from l2s_pipelines.errors import InputError

    nprocs, omp, parallel = o.resolve_threads(o.available_cpus(), ns.nprocs, ns.omp_nthreads, ns.parallel_images)
    if not (ns.device in ("auto", "cpu", "cuda") or (ns.device.startswith("cuda:") and ns.device[5:].isdigit())):
        raise InputError(f"--device {ns.device!r}: expected auto, cpu, cuda or cuda:N")
    absolute = lambda p: None if p is None else Path(os.path.abspath(os.path.expanduser(p)))  # noqa: E731
    return o.RunOptions(
        bids_dir=absolute(ns.bids_dir), output_dir=absolute(ns.output_dir),
        analysis_level=ns.analysis_level, work_dir=absolute(ns.work_dir),
        participant_label=o.strip_prefix(ns.participant_label, "sub-"),
        session_label=o.strip_prefix(ns.session_label, "ses-"),
        bids_filters=o.load_filter_file(ns.bids_filter_file), nprocs=nprocs, omp_nthreads=omp,
        parallel_images=parallel,
        mem_mb=o.parse_mem(ns.mem), skip_bids_validation=ns.skip_bids_validation,
        stop_on_first_crash=ns.stop_on_first_crash, reports_only=ns.reports_only,
        boilerplate_only=ns.boilerplate_only, random_seed=ns.random_seed, verbosity=ns.verbosity,
        model_dir=absolute(ns.model), device=ns.device,
        reference_derivatives=absolute(ns.reference_derivatives), input_suffix=ns.input_suffix,
        save_probseg=ns.save_probseg, plugin=ns.plugin, plugin_args=o.parse_plugin_args(ns.plugin_args),
        cluster_jobs=ns.cluster_jobs,
        output_spaces=tuple(ns.output_spaces))


def set_thread_env(nthreads: int) -> None:
    """Bound BLAS/OpenMP threads per process and switch off telemetry (before numpy/torch)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(nthreads)
    os.environ["NO_ET"] = "1"
    os.environ["NIPYPE_NO_ET"] = "1"


def main(argv=None) -> int:
    """Entry point of ``l2s-bids``; returns the exit code (see the module docstring)."""
    from l2s_pipelines.errors import InputError, ModelError

    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        opts = options_from_args(ns)
    except InputError as exc:
        print(f"l2s-bids: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    set_thread_env(opts.omp_nthreads)
    level = {0: logging.WARNING, 1: logging.INFO}.get(opts.verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("l2s").setLevel(min(level, logging.INFO))
    from l2s_pipelines.bids_app.run import run

    try:
        return run(opts, command=["l2s-bids", *(sys.argv[1:] if argv is None else map(str, argv))])
    except (InputError, ModelError) as exc:
        print(f"l2s-bids: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug: one line, never a traceback unless asked for (-vv)
        logging.getLogger("l2s").debug("internal error", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"l2s-bids: internal error: {type(exc).__name__}: {first} (a bug; rerun with -vv for "
              "the traceback and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover - needed under the spawn start method
    sys.exit(main())

"""``l2s-train``: train a segmentation model package from label maps (and labelled real scans).

Example (the bundled model's recipe; see the README)::

    l2s-train --label-maps ../shared/data/label_maps \\
        --real-bids ../shared/data/bids_real \\
        --tune-participant-label ixi012 ixi013 ixi014 bert \\
        --method l2s-parametric --ndim 2 --plane all --steps 20000 \\
        -o models/l2s-2p5d

Inputs are collected and checked before anything is trained (exit code 2 with the offending
file named on bad input); real scans and their reference labels are found with pybids
(``validate=True``) in ``--real-bids`` and ``--reference-derivatives``. Training runs as a Pydra
workflow (:func:`l2s_pipelines.workflows.training.init_train_wf`) with the ``cf``, ``debug`` or
``slurm`` worker; torch is imported only inside the task. The trainer's run folder
(checkpoints, ``metrics.jsonl``) is ``--run-dir`` (default ``WORK_DIR/run``, WORK_DIR from
``-w``, default ``MODEL_DIR/../.l2s-train-work/NAME``), which ``--resume`` continues from;
to record Dice against training time, resume one run folder with growing ``--steps`` into one
package folder per stage. After training the manifest is completed (tune and validation
subjects, command line, budget with cumulative wall time, curve file ``metrics.jsonl`` copied
into the package) and ``training_report.html`` is written into the package folder.

Exit codes: 0 success; 2 bad arguments or inputs; 1 training failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from l2s_pipelines.errors import InputError, ModelError
from l2s_pipelines.io.manifest_checks import MAX_IN_CHANNELS
from l2s_pipelines.planes import PLANES
from l2s_pipelines.train import AUGMENT_COMPONENTS, METHODS, NEEDS_REAL

LOG = logging.getLogger("l2s_pipelines.train_cli")
#: the methods l2s-train offers (the oracle is for the synthetic experiments only)
CLI_METHODS = tuple(m for m in METHODS if m != "oracle")
NIFTI_EXT = (".nii", ".nii.gz")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``l2s-train`` (``-`` and ``_`` spellings both accepted)."""
    from l2s_pipelines.bids_app.helpfmt import HelpFormatter  # plain text, no reST markup

    p = argparse.ArgumentParser(prog="l2s-train", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)

    def add(*names, **kw):
        alts = ["--" + n[2:].replace("-", "_") for n in names if n.startswith("--") and "-" in n[2:]]
        p.add_argument(*names, *alts, **kw)

    add("--label-maps", required=True, type=Path, metavar="DIR",
        help="folder of NIfTI label maps, or a BIDS derivative dataset of *_dseg files")
    add("--generation-labels", type=Path, metavar="TSV",
        help="generation classes (columns label, generation_class); default: "
             "generation_labels.tsv beside the label maps when present")
    add("--real-bids", type=Path, metavar="BIDS_DIR", help="BIDS dataset of labelled real scans")
    add("--reference-derivatives", type=Path, metavar="DIR",
        help="derivative dataset of *_desc-reference_dseg labels (default BIDS_DIR/derivatives/reference)")
    add("--tune-participant-label", nargs="+", default=[], metavar="L",
        help="labelled real scans used for tuning (theta; or the real batches of mixed, "
             "finetune, supervised)")
    add("--val-participant-label", nargs="+", default=None, metavar="L",
        help="validation subjects for Dice curves and model selection (default: the tune "
             "subjects); never put the scored subjects here unless you mean it")
    add("--method", choices=CLI_METHODS, default="l2s-parametric")
    add("--ndim", type=int, choices=(2, 3), default=2)
    add("--plane", nargs="+", choices=(*sorted(PLANES), "all"), default=["axial"],
        help="2D slicing plane(s); several planes (or 'all' = the three) train one network on "
             "slices of each and fuse them at inference (2.5D). Sagittal slices hold no "
             "left-right cue: with other planes, they are learnt on left/right-merged labels "
             "and inference takes the side from the other planes (FastSurfer's approach); "
             "alone, the left-right flip augmentation is switched off")
    add("--voxel-size", type=float, default=1.0, metavar="MM", help="isotropic training voxel size (mm)")
    add("--patch-size", type=int, nargs="+", default=None, metavar="N",
        help="patch size in voxels (one value for all axes, or one per axis)")
    add("--slices", type=int, default=1, metavar="K",
        help="2D: K neighbouring slices (odd) as input channels, the middle one segmented "
             "(FastSurfer's thick slices); training images are synthesised as 3D slabs. With "
             "--init-weights, a one-slice package's weights are widened (neighbours start at zero)")
    add("--batch-size", type=int, default=None)
    add("--steps", type=int, default=None, help="total optimisation steps (warm-up included)")
    add("--warmup-steps", type=int, default=None, help="plain synthetic steps before Learn2Synth")
    add("--lr", type=float, default=None, help="segmenter learning rate")
    add("--lr-theta", type=float, default=None, help="augmenter learning rate")
    add("--augment", nargs="+", choices=AUGMENT_COMPONENTS, default=None, metavar="PART",
        help="learnable parts of the parametric augmenter (l2s-parametric): any of "
             f"{', '.join(AUGMENT_COMPONENTS)}; default noise bias (the paper's). gamma: a "
             "per-image gamma of learnable spread; blur: a per-image Gaussian blur of learnable "
             "upper width (voxels of the training grid)")
    add("--widths", type=int, nargs="+", default=None, help="UNet widths per level")
    add("--norm", choices=("none", "instance", "group"), default=None,
        help="UNet normalisation (never BatchNorm: it breaks the hypergradient); default none")
    add("--loss", choices=("dice", "ce", "dice+ce", "logit_mse"), default=None,
        help="segmentation loss (default dice+ce)")
    add("--priors", choices=("synthseg", "mild"), default="synthseg",
        help="generator priors (in mm, so they mean the same at any --voxel-size): SynthSeg's "
             "ranges, or milder bias, gamma and noise with 30%% skull-stripped samples (the "
             "bundled model's recipe); default synthseg")
    add("--amp", choices=("none", "bf16"), default=None,
        help="bf16 autocast of plain steps' forward pass (about 1.5x faster on CPUs with "
             "AVX512-BF16; the Learn2Synth meta-step stays fp32); default none")
    add("--lr-schedule", choices=("constant", "cosine", "poly"), default=None,
        help="segmenter learning-rate decay after --lr-warmup; default constant")
    add("--lr-warmup", type=int, default=None, metavar="STEPS",
        help="linear learning-rate warm-up from lr/10; default 0")
    add("--lr-end", type=float, default=None, metavar="FRACTION",
        help="final learning rate as a fraction of --lr; default 0.05")
    add("--schedule-steps", type=int, default=None, metavar="STEPS",
        help="horizon of the decay (default --steps; set it once for a run trained in stages)")
    add("--hyper-every", type=int, default=None, metavar="K",
        help="Learn2Synth: a hypergradient (meta) step every K-th step only, plain steps through "
             "the current augmenter between them (a named deviation from the paper, which has "
             "K = 1: about 7x a plain step's cost on CPU); default 1")
    add("--decay-from-min", type=float, default=None, metavar="MIN",
        help="run the decay on the clock instead of steps: from --lr at MIN minutes of training "
             "time to its end at --time-budget-min (arms at equal CPU time both anneal by the "
             "end of their budget, however costly their steps); default off")
    add("--synth-val-size", type=int, default=None, metavar="N",
        help="synthetic validation images scored beside the real ones (tells under-training "
             "from a domain gap); default 0")
    add("--time-budget-min", type=float, default=None, metavar="MIN",
        help="stop, with a checkpoint and a package, once the run's training time (cumulative "
             "over resumes) reaches MIN minutes: arms of a comparison at equal CPU time; default none")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--seed", type=int, default=0)
    add("--resume", action="store_true", help="continue from MODEL_DIR/training's last checkpoint")
    add("--init-weights", type=Path, default=None, metavar="MODEL_DIR",
        help="start from a model package's weights and step count (same architecture; Adam, "
             "augmenter and RNG restart, the lr is warmed up again): continues a campaign whose "
             "run folder is gone, e.g. from the committed bundled model")
    add("--eval-every", type=int, default=None, metavar="STEPS")
    add("--checkpoint-every", type=int, default=None, metavar="STEPS")
    add("--name", default=None, help="model name recorded in the manifest (default: folder name)")
    add("--plugin", choices=("cf", "debug", "slurm"), default="cf", help="Pydra worker")
    add("--sbatch-args", default="", help="extra sbatch arguments for --plugin slurm; write --sbatch-args=\"--time=04:00:00 ...\"")
    add("--nthreads", type=int, default=None, help="torch threads in the training task")
    add("-w", "--work-dir", type=Path, default=None,
        help="Pydra cache and default run folder (default: MODEL_DIR/../.l2s-train-work/NAME)")
    add("--run-dir", type=Path, default=None,
        help="trainer run folder with checkpoints and metrics.jsonl (default WORK_DIR/run)")
    add("-o", "--output", required=True, type=Path, metavar="MODEL_DIR",
        help="model package folder to write")
    add("--no-report", action="store_true", help="skip training_report.html")
    add("-v", "--verbose", action="count", default=0)
    return p


def _generator_priors(priors: str, *, flip: bool) -> dict:
    """Generator settings (``SynthConfig`` fields) of ``--priors``; the voxel size and patch
    are filled in by the trainer."""
    from l2s_pipelines.synth.generator import SynthConfig
    cfg = (SynthConfig.mild() if priors == "mild" else SynthConfig()).to_dict()
    for key in ("patch_size", "voxel_size_mm", "percentiles"):
        cfg.pop(key)
    cfg["flip"] = cfg["flip"] and flip
    return cfg


def _package_dir(path: Path) -> Path:
    """A model package folder given to --init-weights (checked: it holds a manifest)."""
    path = Path(path).expanduser().resolve()
    if not (path / "manifest.json").is_file():
        raise InputError(f"{path}: --init-weights needs a model package folder (no manifest.json)")
    return path


def _strip(label: str) -> str:
    return label[4:] if label.startswith("sub-") else label


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_EXT) and path.is_file()


def collect_label_maps(path: Path, generation_labels: Path | None = None) -> tuple[list[str], str | None]:
    """Label maps to synthesise from, and the generation-class table.

    ``path`` is a folder of NIfTI files, or a BIDS derivative dataset (it has
    ``dataset_description.json``) whose ``*_dseg.nii[.gz]`` files are used. Returns sorted
    absolute paths and the TSV path (given, or ``generation_labels.tsv`` beside the maps, or
    None). Raises InputError naming the folder when nothing usable is found.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"{path}: --label-maps folder does not exist")
    if (path / "dataset_description.json").is_file():
        maps = sorted(p for p in path.rglob("*_dseg.nii*") if _is_nifti(p))
        what = "*_dseg.nii[.gz] files in this derivative dataset"
    else:
        maps = sorted(p for p in path.iterdir() if _is_nifti(p))
        what = "NIfTI label maps (*.nii, *.nii.gz)"
    if not maps:
        raise InputError(f"{path}: no {what}")
    if generation_labels is not None:
        generation_labels = Path(generation_labels).expanduser().resolve()
        if not generation_labels.is_file():
            raise InputError(f"{generation_labels}: --generation-labels file does not exist")
    elif (path / "generation_labels.tsv").is_file():
        generation_labels = path / "generation_labels.tsv"
    return [str(p) for p in maps], (str(generation_labels) if generation_labels else None)


def collect_real_pairs(bids_dir: Path, reference_dir: Path | None, labels: list[str]) -> list[dict]:
    """Find each participant's T1w scan and reference label map with pybids (validate=True).

    Returns ``[{"subject": "sub-X", "image": path, "reference": path}]`` in the order given.
    Raises InputError naming the dataset and the known labels for an unknown participant, or
    the expected file when a scan or reference is missing or ambiguous.
    """
    from bids import BIDSLayout

    bids_dir = Path(bids_dir).expanduser().resolve()
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    reference_dir = Path(reference_dir or bids_dir / "derivatives" / "reference").expanduser().resolve()
    if not (reference_dir / "dataset_description.json").is_file():
        raise InputError(f"{reference_dir}: reference derivative dataset missing (no "
                         f"dataset_description.json); pass --reference-derivatives")
    layout = BIDSLayout(str(bids_dir), validate=True, derivatives=str(reference_dir))
    known = set(layout.get_subjects())
    unknown = [lab for lab in map(_strip, labels) if lab not in known]
    if unknown:
        raise InputError(f"{bids_dir}: unknown participant(s) {unknown}; the dataset has {sorted(known)}")
    exts = list(NIFTI_EXT)
    images, refs = {}, {}
    for f in layout.get(suffix="T1w", extension=exts, scope="raw"):
        images.setdefault(f.entities["subject"], []).append(f.path)
    for f in layout.get(suffix="dseg", desc="reference", extension=exts, scope="derivatives"):
        refs.setdefault(f.entities["subject"], []).append(f.path)
    pairs = []
    for lab in map(_strip, labels):
        imgs, rfs = images.get(lab, []), refs.get(lab, [])
        if len(imgs) != 1:
            raise InputError(f"{bids_dir / ('sub-' + lab)}: expected exactly one T1w image, found {len(imgs)}")
        if len(rfs) != 1:
            raise InputError(f"{reference_dir / ('sub-' + lab)}: expected exactly one "
                             f"*_desc-reference_dseg image, found {len(rfs)}")
        pairs.append({"subject": f"sub-{lab}", "image": imgs[0], "reference": rfs[0]})
    return pairs


def _patch(args) -> list[int] | None:
    if args.patch_size is None:
        return None
    n = args.ndim
    if len(args.patch_size) not in (1, n):
        raise InputError(f"--patch-size: give 1 or {n} values for --ndim {n}, got {args.patch_size}")
    return list(args.patch_size) * (n if len(args.patch_size) == 1 else 1)


def build_spec(args, argv: list[str]) -> dict:
    """Check the arguments and collect the inputs into a JSON-able training spec.

    ``spec["config"]`` holds the TrainConfig keyword arguments given on the command line
    (None-valued options are left to the trainer's defaults); ``label_maps``,
    ``generation_labels``, ``real_train``/``real_val`` (see :func:`collect_real_pairs`),
    ``out_dir`` (the trainer's run folder), ``model_dir`` and ``command``.
    """
    planes = sorted(PLANES) if "all" in args.plane else list(dict.fromkeys(args.plane))
    if args.ndim == 3 and planes != ["axial"]:
        raise InputError(f"--plane {' '.join(args.plane)}: planes apply to 2D training only (--ndim 2)")
    maps, gen = collect_label_maps(args.label_maps, args.generation_labels)
    tune, val = list(args.tune_participant_label), args.val_participant_label
    if args.method in NEEDS_REAL and not tune:
        raise InputError(f"--method {args.method} needs labelled real scans: give "
                         f"--real-bids and --tune-participant-label")
    if (tune or val) and args.real_bids is None:
        raise InputError("--tune/--val-participant-label need --real-bids BIDS_DIR")
    real_train = collect_real_pairs(args.real_bids, args.reference_derivatives, tune) if tune else []
    real_val = (collect_real_pairs(args.real_bids, args.reference_derivatives, val)
                if val else list(real_train))
    for name in ("steps", "batch_size", "warmup_steps", "eval_every", "checkpoint_every", "hyper_every"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup_steps" else 1):
            raise InputError(f"--{name.replace('_', '-')}: must be positive, got {v}")
    if args.decay_from_min is not None and not 0 <= args.decay_from_min < (args.time_budget_min or 0):
        raise InputError(f"--decay-from-min {args.decay_from_min}: the clock decay ends at "
                         f"--time-budget-min, which must be given and larger")
    if args.slices != 1 and (args.ndim != 2 or not 1 <= args.slices <= MAX_IN_CHANNELS or args.slices % 2 == 0
                             or args.method == "l2s-nonparametric"):
        raise InputError(f"--slices {args.slices}: give an odd number of slices up to {MAX_IN_CHANNELS}, for "
                         f"--ndim 2 and not with --method l2s-nonparametric (its augmenter takes one channel)")
    if args.augment is not None and args.method != "l2s-parametric":
        raise InputError(f"--augment {' '.join(args.augment)}: only the parametric augmenter "
                         f"(--method l2s-parametric) has these parts, not --method {args.method}")
    model_dir = Path(args.output).expanduser().resolve()
    work = Path(args.work_dir or model_dir.parent / ".l2s-train-work" / model_dir.name).expanduser().resolve()
    run_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else work / "run"
    if args.resume and not (run_dir / "checkpoint").is_dir():
        raise InputError(f"{run_dir / 'checkpoint'}: --resume given but there is no checkpoint "
                         f"to resume from (pass the --run-dir of the interrupted run)")
    config = {
        "method": args.method, "ndim": args.ndim, "planes": planes if args.ndim == 2 else [],
        # the generator flips the first in-plane axis (left-right in axial and coronal slices;
        # anterior-posterior in sagittal ones, which are never flipped: their elements are
        # left/right-merged with other planes, and the flip is off for sagittal alone)
        "generator": _generator_priors(args.priors, flip=not (args.ndim == 2 and planes == ["sagittal"])),
        "amp": args.amp, "lr_schedule": args.lr_schedule, "lr_warmup": args.lr_warmup,
        "lr_end": args.lr_end, "schedule_steps": args.schedule_steps,
        "synth_val_size": args.synth_val_size,
        "time_budget_s": None if args.time_budget_min is None else 60.0 * args.time_budget_min,
        "decay_from_s": None if args.decay_from_min is None else 60.0 * args.decay_from_min,
        "hyper_every": args.hyper_every,
        "augmenter": None if args.augment is None else {c: c in args.augment for c in AUGMENT_COMPONENTS},
        "init_from": str(_package_dir(args.init_weights)) if args.init_weights else None,
        "voxel_size": args.voxel_size, "patch_size": _patch(args), "batch_size": args.batch_size,
        "in_slices": args.slices,
        "steps": args.steps, "warmup_steps": args.warmup_steps, "lr": args.lr,
        "lr_theta": args.lr_theta, "widths": args.widths, "norm": args.norm,
        "loss": args.loss, "device": args.device,
        "seed": args.seed, "resume": bool(args.resume), "eval_every": args.eval_every,
        "checkpoint_every": args.checkpoint_every, "name": args.name or model_dir.name,
    }
    return {"config": config, "label_maps": maps, "generation_labels": gen,
            "real_train": real_train, "real_val": real_val,
            "out_dir": str(run_dir), "model_dir": str(model_dir), "work_dir": str(work),
            "nthreads": args.nthreads,
            "command": "l2s-train " + " ".join(shlex.quote(a) for a in argv)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s-train``; returns the exit code (0 ok, 1 training failed, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    os.environ.setdefault("NO_ET", "1")
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    try:
        spec = build_spec(args, argv)
    except InputError as exc:
        print(f"l2s-train: error: {exc}", file=sys.stderr)
        return 2
    from l2s_pipelines.bids_app.train_package import finalize_package
    from l2s_pipelines.workflows.training import run_train_wf

    try:
        result = run_train_wf(spec, plugin=args.plugin, work_dir=Path(spec["work_dir"]) / "pydra",
                              sbatch_args=args.sbatch_args)
        pkg = finalize_package(spec, result)
    except (InputError, ModelError) as exc:
        print(f"l2s-train: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    except RuntimeError as exc:
        print(f"l2s-train: training failed: {exc}", file=sys.stderr)
        return 1
    if not args.no_report:
        from l2s_pipelines.bids_app.training_report import write_training_report
        write_training_report(pkg)
    print(f"l2s-train: model package written to {pkg}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

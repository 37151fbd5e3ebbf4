"""Inputs of ``bench_app.py``: the temporary BIDS datasets it times and the model it uses
(the bundled package, one given with ``--model``, or an untrained stand-in for timings only)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("L2S_DATA", REPO.parent / "shared" / "data"))


def write_bids_root(root: Path, name: str) -> None:
    """A minimal valid raw BIDS dataset folder (dataset_description.json, README)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"}, indent=2) + "\n")
    (root / "README").write_text(f"{name}: temporary benchmark dataset made by benchmarks/bench_app.py\n")


def one_subject_dataset(root: Path, image: Path) -> Path:
    """BIDS dataset holding ``image`` as ``sub-bench/anat/sub-bench_T1w.nii.gz`` (a copy)."""
    write_bids_root(root, "bench_app overhead")
    anat = root / "sub-bench" / "anat"
    anat.mkdir(parents=True)
    shutil.copyfile(image, anat / "sub-bench_T1w.nii.gz")
    return root


def varied_dataset(root: Path, sources: list[Path], n: int, seed: int = 0) -> Path:
    """BIDS dataset of ``n`` subjects ``sub-tNN``: scan ``sources[i % len]`` times a random
    intensity scale in [0.9, 1.1] plus Gaussian noise of 1% of its 99th percentile (seeded)."""
    import nibabel as nib
    import numpy as np

    if not sources:
        raise SystemExit(f"no IXI scans found under {DATA / 'bids_real'}")
    write_bids_root(root, "bench_app throughput")
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = nib.load(sources[i % len(sources)])
        data = np.asarray(img.dataobj, dtype=np.float32)
        scale = rng.uniform(0.9, 1.1)
        sigma = 0.01 * float(np.percentile(data, 99))
        data = np.clip(data * scale + rng.normal(0, sigma, data.shape).astype(np.float32), 0, None)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        anat = root / f"sub-t{i:02d}" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, img.affine, hdr), anat / f"sub-t{i:02d}_T1w.nii.gz")
    return root


def standin_package(directory: Path) -> Path:
    """UNTRAINED package with the default model's shape: 2D UNet (16-24-32-48-64, 33 labels),
    2.5D over axial + coronal, 2 mm voxels. For timings only."""
    import torch

    from l2s_pipelines.io.checkpoint import save_model_package
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.nn.unet import UNet, UNetConfig

    table = LabelTable.default()
    cfg = UNetConfig(ndim=2, out_channels=len(table))
    torch.manual_seed(0)
    manifest = {"name": "bench-standin-untrained-2p5d", "description": "random weights, timing stand-in",
                "architecture": cfg.to_dict(), "labels": table.to_dict()["labels"],
                "preprocessing": {"orientation": "RAS", "voxel_size_mm": [2.0, 2.0, 2.0],
                                  "intensity": "percentile", "percentiles": [1, 99]},
                "inference": {"mode": "2.5d", "planes": ["axial", "coronal"]},
                "training": {"method": "none (untrained timing stand-in)", "steps": 0, "seed": 0}}
    return save_model_package(directory, UNet(cfg), manifest)


def resolve_model(args, tmp: Path) -> tuple[Path, bool]:
    """(model package folder, is_timing_standin); a clear exit message when none is found."""
    if args.model is not None:
        if not (args.model / "manifest.json").is_file():
            raise SystemExit(f"{args.model}: not a model package (manifest.json missing)")
        return args.model.resolve(), False
    if args.standin:
        return standin_package(tmp / "standin_model"), True
    from l2s_pipelines.errors import ModelError
    from l2s_pipelines.io.checkpoint import default_model_dir

    try:
        return default_model_dir(), False
    except ModelError as exc:
        raise SystemExit(f"bench_app: {exc}\nPass --model PKG (e.g. /work/runs/l2s-parametric/step_00500) "
                         "or --standin (untrained timing stand-in).") from None


def model_record(path: Path, standin: bool) -> dict:
    from l2s_pipelines.io.checkpoint import read_manifest

    m = read_manifest(path)
    return {"path": str(path), "name": m.get("name"), "sha256": m.get("weights", {}).get("sha256"),
            "timing_standin": standin, "trained": not standin,
            "training_method": m.get("training", {}).get("method"), "training_steps": m.get("training", {}).get("steps"),
            "architecture": m.get("architecture"), "inference": m.get("inference"),
            "voxel_size_mm": m.get("preprocessing", {}).get("voxel_size_mm")}

"""``l2s-demo``: build a small BIDS dataset from data shipped with nilearn, then run the app on it.

The images are varied copies of nilearn's bundled ICBM 2009a *symmetric* T1 template
(``nilearn.datasets.load_mni152_template``; no download). It is not ``MNI152NLin2009cAsym`` and
is never labelled as such. Each copy differs by intensity scaling and gamma, a smooth
multiplicative bias field, Gaussian noise and a small rotation; subject 1 has two sessions.

Example
-------
    l2s-demo --output l2s-demo --n-subjects 3
    # rawdata in l2s-demo/rawdata, derivatives and reports in l2s-demo/derivatives/l2s-pipelines
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from l2s_pipelines import __version__
from l2s_pipelines.bids_app.cli import EXIT_BAD_INPUT

TEMPLATE_NAME = "ICBM 2009a nonlinear symmetric T1 template as shipped with nilearn"


def _rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation matrix from angles (degrees) about x, then y, then z."""
    rx, ry, rz = np.deg2rad(degrees)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def vary_image(data: np.ndarray, rng: np.random.Generator, *, max_rotation_deg: float = 6.0) -> tuple[np.ndarray, dict]:
    """One varied copy of ``data`` (float ``(X, Y, Z)``, values in [0, 1]); returns it and its recipe.

    Steps: rotation about the volume centre (linear interpolation), intensity gamma and scale,
    a smooth bias field ``exp(sum of low-order polynomial terms)``, additive Gaussian noise.
    Output: int16-safe float array (scaled to a maximum of about 1000 x scale).
    """
    angles = tuple(float(a) for a in rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    rot = _rotation(angles)
    centre = (np.array(data.shape) - 1) / 2.0
    out = ndimage.affine_transform(data, rot, offset=centre - rot @ centre, order=1, mode="constant")
    gamma = float(rng.uniform(0.8, 1.25))
    scale = float(rng.uniform(0.5, 2.0))
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in data.shape], indexing="ij", sparse=True)
    coeffs = rng.normal(0, 0.15, 6)
    log_bias = (coeffs[0] * grid[0] + coeffs[1] * grid[1] + coeffs[2] * grid[2]
                + coeffs[3] * grid[0] * grid[1] + coeffs[4] * grid[1] ** 2 + coeffs[5] * grid[2] ** 2)
    noise_sd = float(rng.uniform(0.005, 0.03))
    out = np.clip(out, 0, None) ** gamma * np.exp(log_bias)
    out = out + rng.normal(0, noise_sd, out.shape)
    out = np.clip(out, 0, None) * 1000.0 * scale
    recipe = {"rotation_deg": [round(a, 2) for a in angles], "gamma": round(gamma, 3),
              "scale": round(scale, 3), "bias_coefficients": [round(float(c), 3) for c in coeffs],
              "noise_sd": round(noise_sd, 4)}
    return out, recipe


def _save_t1w(data: np.ndarray, affine: np.ndarray, path: Path, recipe: dict) -> None:
    img = nib.Nifti1Image(np.round(data).clip(0, 32767).astype(np.int16), affine)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    sidecar = {"Description": f"Synthetic variation of the {TEMPLATE_NAME} (demo data, not a scan)",
               "L2SDemoRecipe": recipe}
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar, indent=2))


def build_demo_dataset(root, *, n_subjects: int = 3, seed: int = 0, resolution: int = 1) -> Path:
    """Write a BIDS dataset of ``n_subjects`` (>= 1) varied template copies under ``root``.

    ``sub-01`` has two sessions (``ses-1``, ``ses-2``: two different variations); the others
    have one T1w each. Returns ``root``.
    """
    from nilearn.datasets import load_mni152_template  # bundled with nilearn: no download

    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    root = Path(root)
    template = load_mni152_template(resolution=resolution)
    data = np.asarray(template.get_fdata(), dtype=np.float32)
    data = data / max(float(data.max()), 1e-6)
    rng = np.random.default_rng(seed)
    rows = ["participant_id\tn_sessions\tsource"]
    for i in range(1, n_subjects + 1):
        sub = f"sub-{i:02d}"
        sessions = ["ses-1", "ses-2"] if i == 1 else [None]
        for ses in sessions:
            varied, recipe = vary_image(data, rng)
            folder = root / sub / (ses or "") / "anat"
            name = "_".join(p for p in (sub, ses, "T1w") if p) + ".nii.gz"
            _save_t1w(varied, template.affine, folder / name, recipe)
        rows.append(f"{sub}\t{len(sessions)}\tvaried copy of the nilearn ICBM 2009a symmetric template")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    (root / "participants.json").write_text(json.dumps({
        "n_sessions": {"Description": "number of sessions of this participant"},
        "source": {"Description": "what the images were made from"}}, indent=2))
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "l2s-pipelines demo dataset (synthetic variations of a template)",
        "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "see nilearn's template licence",
        "Authors": ["l2s-pipelines demo builder"],
        "GeneratedBy": [{"Name": "l2s-demo", "Version": __version__,
                         "Description": f"Varied copies of the {TEMPLATE_NAME}"}]}, indent=2))
    (root / "README").write_text(
        f"Demo dataset built by l2s-demo from the {TEMPLATE_NAME}.\n"
        "Each T1w is a copy with a small rotation, intensity scaling and gamma, a smooth bias field\n"
        "and noise (recipe in each JSON sidecar). These are not real scans.\n")
    return root


def _parser() -> argparse.ArgumentParser:
    from l2s_pipelines.bids_app.helpfmt import HelpFormatter  # plain text, no reST markup

    p = argparse.ArgumentParser(prog="l2s-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--output", type=Path, default=Path("l2s-demo"),
                   help="demo folder: rawdata/, derivatives/l2s-pipelines/ and work/ go there")
    p.add_argument("--work-dir", "--work_dir", "-w", type=Path, default=None,
                   help="Pydra work folder (default OUTPUT/work)")
    p.add_argument("--n-subjects", "--n_subjects", type=int, default=3, help="number of subjects (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image variations")
    p.add_argument("--nprocs", type=int, default=None, help="passed to l2s-bids")
    p.add_argument("--model", type=Path, default=None, help="model package (default: bundled)")
    return p


def main(argv=None) -> int:
    """Build the demo dataset, run the participant and group levels, print the report paths."""
    args = _parser().parse_args(argv)
    if args.n_subjects < 1:
        print("l2s-demo: error: --n-subjects must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.output.absolute()
    rawdata = build_demo_dataset(out / "rawdata", n_subjects=args.n_subjects, seed=args.seed)
    derivatives = out / "derivatives" / "l2s-pipelines"
    work = (args.work_dir or out / "work").absolute()
    print(f"demo dataset: {rawdata}")
    from l2s_pipelines.bids_app.cli import main as bids_main

    common = ["-w", str(work)]
    if args.nprocs:
        common += ["--nprocs", str(args.nprocs)]
    if args.model:
        common += ["--model", str(args.model)]
    code = bids_main([str(rawdata), str(derivatives), "participant", *common])
    if code not in (0, 3):  # 3: some images failed; the others still get a group report
        print(f"l2s-demo: participant level failed (exit {code})", file=sys.stderr)
        return code
    group_code = bids_main([str(rawdata), str(derivatives), "group", "-w", str(work)])
    reports = sorted(derivatives.glob("sub-*.html"))
    print("subject reports:\n" + "\n".join(f"  {r}" for r in reports))
    if (derivatives / "group.html").exists():
        print(f"group report:\n  {derivatives / 'group.html'}")
    return code or group_code


if __name__ == "__main__":
    sys.exit(main())

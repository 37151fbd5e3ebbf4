"""``l2s-train`` end to end on tiny inputs: 2 shared label maps downsampled to 4 mm, the real
scan ixi012 of the shared BIDS set, a 2-level UNet of widths 4 and 8, 32 x 32 patches, a few
steps. The ``cf`` run goes through a subprocess (the pool must not fork a process in which
torch already ran); ``debug`` runs in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import build_bids
from l2s_pipelines.bids_app.train_cli import main
from l2s_pipelines.bids_app.train_package import cumulative_wall_time
from l2s_pipelines.errors import InputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BIDS = DATA / "bids_real"
TINY = ["--voxel-size", "4", "--patch-size", "32", "--batch-size", "2", "--widths", "4", "8",
        "--nthreads", "1", "--eval-every", "1", "--checkpoint-every", "1"]

pytestmark = pytest.mark.skipif(not (DATA / "label_maps").is_dir() or not BIDS.is_dir(),
                                reason="shared test data not present")


@pytest.fixture(scope="module")
def label_maps(tmp_path_factory) -> Path:
    """Two shared label maps at 4 mm (64^3), nearest-neighbour downsampled."""
    from l2s_pipelines.io.preprocess import resample_to_voxel_size

    out = tmp_path_factory.mktemp("maps")
    for i in (1, 2):
        img = nib.load(DATA / "label_maps" / f"training_seg_0{i}.nii.gz")
        data, aff = resample_to_voxel_size(np.asarray(img.dataobj).astype(np.int16), img.affine, 4.0, order=0)
        nib.save(nib.Nifti1Image(data, aff), out / f"seg{i}.nii.gz")
    return out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_synthseg_debug_all_planes(label_maps, tmp_path):
    from l2s_pipelines.io.checkpoint import load_model_package

    out = tmp_path / "model"
    rc = main(["--label-maps", str(label_maps), "--real-bids", str(BIDS), "--val-participant-label",
               "sub-ixi012", "--method", "synthseg", "--plane", "all", "--steps", "2", "--plugin",
               "debug", "-o", str(out), *TINY])
    assert rc == 0
    model, manifest = load_model_package(out)
    assert model.config.ndim == 2 and model.config.widths == (4, 8)
    assert manifest["inference"]["mode"] == "2.5d"
    assert manifest["inference"]["planes"] == ["axial", "coronal", "sagittal"]
    assert manifest["inference"]["lr_merged_planes"] == ["sagittal"]  # learnt on merged labels
    training = manifest["training"]
    assert training["method"] == "synthseg" and training["steps"] == 2
    assert training["tune_subjects"] == [] and training["val_subjects"] == ["sub-ixi012"]
    assert training["label_maps"] == ["seg1.nii.gz", "seg2.nii.gz"]
    assert training["command"].startswith("l2s-train --label-maps")
    assert training["budget"]["batch_size"] == 2 and training["budget"]["wall_time_s"] > 0
    assert manifest["preprocessing"]["voxel_size_mm"] == [4.0, 4.0, 4.0]
    recs = _records(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1] and all("val_dice" in r for r in recs)
    report = (out / "training_report.html").read_text()
    assert "curve_loss.png" in report and "curve_dice.png" in report and "examples.png" in report
    for png in ("curve_loss.png", "curve_dice.png", "examples.png"):
        assert (out / "figures" / png).stat().st_size > 1000
    with np.load(out / "examples.npz") as ex:
        assert ex["synthetic"].shape == ex["augmented"].shape == (4, 32, 32)
        assert ex["real"].shape == (4, 32, 32) and 0 <= ex["real"].min() and ex["real"].max() <= 1


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ET="1", NIPYPE_NO_ET="1", OMP_NUM_THREADS="1")
    code = "import sys; from l2s_pipelines.bids_app.train_cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_l2s_parametric_cf_and_resume(label_maps, tmp_path):
    out, run = tmp_path / "model", tmp_path / "run"
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "poetry.lock").write_text("a user's file")  # -w is never swept recursively
    base = ["--label-maps", str(label_maps), "--real-bids", str(BIDS), "--tune-participant-label",
            "ixi012", "--method", "l2s-parametric", "--warmup-steps", "1", "--plugin", "cf",
            "--augment", "noise", "bias", "gamma", "blur", "--run-dir", str(run), "-w", str(tmp_path / "work"), "-o", str(out), *TINY]
    first = _cli(base + ["--steps", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["tune_subjects"] == ["sub-ixi012"]
    assert manifest["training"]["val_subjects"] == ["sub-ixi012"]  # default: the tune subjects
    before = _records(out / "metrics.jsonl")
    assert [r["phase"] for r in before] == ["synth", "l2s"]
    assert {"aug/noise_sigma", "aug/gamma_spread", "aug/blur_max_vox"} <= set(before[1])
    assert manifest["training"]["hyperparameters"]["augmenter"] == \
        {"noise": True, "bias": True, "gamma": True, "blur": True}

    second = _cli(base + ["--steps", "3", "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    after = _records(out / "metrics.jsonl")
    assert [r["step"] for r in after] == [0, 1, 2]
    assert after[:2] == before  # steps 0-1 were restored from the checkpoint, not re-run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 3 and "--resume" in manifest["training"]["command"]
    assert after[-1]["time"] > before[-1]["time"]  # the log's time continues across resumes
    assert manifest["training"]["budget"]["wall_time_s"] == pytest.approx(after[-1]["time"])

    from l2s_pipelines.io.checkpoint import load_model_package
    load_model_package(out)
    assert (tmp_path / "work" / "poetry.lock").read_text() == "a user's file"
    assert (tmp_path / "work" / "pydra" / ".l2s-pipelines-work").is_file()


@pytest.mark.parametrize("case", ["no_maps", "unknown_participant", "no_reference", "no_tune", "no_checkpoint"])
def test_bad_inputs_exit_2_naming_the_file(case, label_maps, tmp_path, capsys):
    maps, bids, extra = label_maps, BIDS, ["--tune-participant-label", "ixi012"]
    if case == "no_maps":
        maps = tmp_path / "empty"
        maps.mkdir()
        expected = str(maps)
    elif case == "unknown_participant":
        extra, expected = ["--tune-participant-label", "ixi012", "sub-ixi999"], "ixi999"
    elif case == "no_reference":
        bids = build_bids(tmp_path / "bids", {"01": [None]}, reference=False)
        extra, expected = ["--tune-participant-label", "01"], str(bids / "derivatives" / "reference")
    elif case == "no_tune":
        extra, expected = [], "--tune-participant-label"
    else:
        extra, expected = extra + ["--resume", "--run-dir", str(tmp_path / "run")], str(tmp_path / "run")
    rc = main(["--label-maps", str(maps), "--real-bids", str(bids), "--method", "l2s-parametric",
               "--steps", "1", "--plugin", "debug", "-o", str(tmp_path / "model"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert expected in err
    assert not (tmp_path / "model").exists()


def test_cumulative_wall_time_sums_resumed_sessions():
    recs = [{"step": 0, "time": 1.0}, {"step": 1, "time": 2.5}, {"step": 2, "time": 0.5},
            {"step": 3, "time": 1.0}]
    assert cumulative_wall_time(recs) == pytest.approx(3.5)
    assert cumulative_wall_time([]) is None


def test_slurm_plugin_with_standin_scheduler(label_maps, tmp_path, monkeypatch):
    """Pydra's slurm worker submits the training job (stand-in sbatch runs it locally)."""
    standins = Path(__file__).parent / "hpc_standins"
    monkeypatch.setenv("PATH", f"{standins}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HPC_STANDIN_STATE", str(tmp_path / "scheduler"))
    out = tmp_path / "model"
    rc = main(["--label-maps", str(label_maps), "--method", "synthseg", "--steps", "1",
               "--plugin", "slurm", "--sbatch-args=--time=00:05:00", "-o", str(out), *TINY])
    assert rc == 0
    submitted = [p.read_text() for p in (tmp_path / "scheduler").glob("*.args")]
    assert len(submitted) == 1 and submitted[0].startswith("--time=00:05:00")
    assert json.loads((out / "manifest.json").read_text())["training"]["steps"] == 1


def test_priors_and_schedule_options_reach_the_trainer(label_maps, tmp_path):
    from l2s_pipelines.bids_app.train_cli import build_parser, build_spec
    from l2s_pipelines.workflows.training import _train_config

    argv = ["--label-maps", str(label_maps), "--method", "synthseg", "--priors", "mild",
            "--amp", "bf16", "--lr-schedule", "cosine", "--lr-warmup", "5", "--schedule-steps", "50",
            "--synth-val-size", "4", "--voxel-size", "2", "-o", str(tmp_path / "model")]
    config, _ = _train_config(build_spec(build_parser().parse_args(argv), argv))
    assert config.generator["skull_strip_probability"] == 0.3 and config.amp == "bf16"
    assert (config.lr_schedule, config.lr_warmup, config.schedule_steps, config.synth_val_size) == \
        ("cosine", 5, 50, 4)
    clock = argv + ["--time-budget-min", "10", "--decay-from-min", "4", "--hyper-every", "4"]
    config, _ = _train_config(build_spec(build_parser().parse_args(clock), clock))
    assert (config.decay_from_s, config.time_budget_s, config.hyper_every) == (240.0, 600.0, 4)
    with pytest.raises(InputError, match="--hyper-every: must be positive"):
        build_spec(build_parser().parse_args(argv + ["--hyper-every", "0"]), argv)
    parts = ["--method", "l2s-parametric", "--real-bids", str(BIDS), "--tune-participant-label", "ixi012",
             "--augment", "noise", "blur"]
    config, _ = _train_config(build_spec(build_parser().parse_args(argv + parts), argv + parts))
    assert config.augmenter == {"noise": True, "bias": False, "gamma": False, "blur": True}
    with pytest.raises(InputError, match="--augment gamma: only the parametric augmenter"):
        build_spec(build_parser().parse_args(argv + ["--augment", "gamma"]), argv)
    with pytest.raises(SystemExit):  # argparse refuses an unknown part
        build_parser().parse_args(argv + ["--augment", "contrast"])
    with pytest.raises(InputError, match="--decay-from-min 4.0: the clock decay ends at --time-budget-min"):
        build_spec(build_parser().parse_args(argv + ["--decay-from-min", "4"]), argv)
    argv += ["--init-weights", str(tmp_path)]
    with pytest.raises(InputError, match="--init-weights needs a model package"):
        build_spec(build_parser().parse_args(argv), argv)


@pytest.mark.parametrize("planes, expected, flip_off", [
    (["axial", "coronal"], ["axial", "coronal"], False),
    (["all"], ["axial", "coronal", "sagittal"], False),
    (["sagittal"], ["sagittal"], True),
])
def test_planes_and_left_right_flip(planes, expected, flip_off, label_maps, tmp_path):
    """Sagittal slices have no left-right axis: the generator's flip (first in-plane axis,
    with a left/right label swap) is off for sagittal alone; with other planes it stays on and
    the sagittal elements (left/right-merged) are never flipped (tests/test_lr_merge.py)."""
    from l2s_pipelines.bids_app.train_cli import build_parser, build_spec

    argv = ["--label-maps", str(label_maps), "--method", "synthseg", "--plane", *planes,
            "-o", str(tmp_path / "model")]
    spec = build_spec(build_parser().parse_args(argv), argv)
    assert spec["config"]["planes"] == expected
    assert spec["config"]["generator"]["flip"] is not flip_off


def test_neighbouring_slices_widen_a_package_train_and_segment(label_maps, tmp_path, capsys):
    """--slices 3 from a one-slice package: the package's weights are widened, Learn2Synth runs
    on three planes (sagittal left/right-merged), and the 3-slice package segments an image."""
    from l2s_pipelines.inference import Segmenter
    from l2s_pipelines.io.checkpoint import load_model_package

    common = ["--label-maps", str(label_maps), "--real-bids", str(BIDS), "--tune-participant-label", "ixi012",
              "--plugin", "debug", *TINY]
    one = tmp_path / "one"
    assert main([*common, "--method", "synthseg", "--plane", "axial", "--steps", "1", "-o", str(one)]) == 0
    three = tmp_path / "three"
    assert main([*common, "--method", "l2s-parametric", "--plane", "all", "--slices", "3", "--steps", "3",
                 "--warmup-steps", "2", "--init-weights", str(one), "-o", str(three)]) == 0
    model, manifest = load_model_package(three)
    assert model.config.in_channels == 3 and manifest["inference"]["lr_merged_planes"] == ["sagittal"]
    assert manifest["training"]["hyperparameters"]["in_slices"] == 3
    recs = _records(three / "metrics.jsonl")
    assert [r["phase"] for r in recs if r["step"] >= 1] == ["synth", "l2s"] and all(
        np.isfinite(r["val_dice"]) for r in recs if r["step"] >= 1)
    img = nib.load(BIDS / "sub-ixi012" / "anat" / "sub-ixi012_T1w.nii.gz")
    small = nib.Nifti1Image(np.asarray(img.dataobj)[::4, ::4, ::4].astype(np.float32), img.affine @ np.diag([4, 4, 4, 1]))
    result = Segmenter.from_package(three, device="cpu").segment(small)
    assert result.dseg.shape == small.shape and np.allclose(result.posteriors.sum(-1), 1, atol=1e-4)
    for bad in (["--slices", "2"], ["--slices", "3", "--ndim", "3"], ["--slices", "11"]):
        assert main([*common, "--method", "synthseg", *bad, "-o", str(tmp_path / "bad")]) == 2
        assert "--slices" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

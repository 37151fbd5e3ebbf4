"""The paper-table benchmark scripts (benchmarks/noise_recovery.py, table2_dice.py) at smoke size:
they run, write what the issue asks for, share their Learn2Synth runs, and the shared warm-up is
exactly a fresh run (not an approximation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LABEL_MAPS = ROOT.parent / "shared" / "data" / "label_maps"
pytestmark = pytest.mark.skipif(not (LABEL_MAPS / "training_seg_20.nii.gz").is_file(),
                                reason=f"{LABEL_MAPS} not present")


def run_script(name: str, *args) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--quick", *map(str, args)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_tables_share_learn2synth_runs(tmp_path):
    work = tmp_path / "work"
    run_script("noise_recovery.py", "--work", work, "--out", tmp_path / "t1.json", "--presets", "0.05", "0.1")
    t1 = json.loads((tmp_path / "t1.json").read_text())
    assert [r["preset"] for r in t1] == ["0.05", "0.1"]
    assert all(0 < r["inferred_sigma"] < 1 and r["steps"] == 12 for r in t1)
    before = (work / "L-0.05" / "metrics.jsonl").read_text()
    state = work / "L-0.05" / "checkpoint" / "state.safetensors"
    stamp = state.stat().st_mtime_ns

    run_script("table2_dice.py", "--work", work, "--out", tmp_path / "t2.json")
    rows = json.loads((tmp_path / "t2.json").read_text())
    assert [r["sigma"] for r in rows] == [0.05, 0.10, 0.15]
    assert all(0 <= r[k] <= 1 for r in rows for k in ("N", "L", "O"))
    # the Learn2Synth runs of noise_recovery were reused (not retrained), 0.15 was trained here
    assert (work / "L-0.05" / "metrics.jsonl").read_text() == before
    assert state.stat().st_mtime_ns == stamp
    assert (work / "L-0.15" / "model" / "manifest.json").is_file()
    assert rows[0]["L_sigma"] == pytest.approx(t1[0]["inferred_sigma"])


def test_shared_warmup_equals_a_fresh_run(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
        import noise_recovery
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from l2s_pipelines.train.data import NoiseCorruption
    from l2s_pipelines.train.trainer import train

    class Args:
        steps, warmup, batch, patch, eval_every, lr_theta, seed, threads = 8, 4, 2, 48, 8, 1e-2, 0, 1
        sigma_init, work, generator = 0.03, tmp_path / "work", "light"

    args = Args()
    source, real, test = (common.load_slices(p, voxel_size=4.0) for p in ("source", "real", "test"))
    noise_recovery.l2s_noise_run(args, 0.15, source, real, test)  # builds the shared warm-up first
    shared = noise_recovery.l2s_noise_run(args, 0.1, source, real, test)
    real_train = common.synthetic_pairs(real, common.no_noise_generator("light"), (48, 48), NoiseCorruption(0.1))
    cfg = common.base_config(args, method="l2s-parametric", augmenter={"bias": False, "sigma_init": 0.03},
                             name="noise-recovery-0.1")
    fresh = train(cfg, label_maps=source, real_train=real_train, out_dir=tmp_path / "fresh")
    assert shared.augmentation == fresh.augmentation
    for (name, a), b in zip(shared.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_parameter_recovery_runs_each_part_with_only_that_part_learnable(tmp_path):
    """parameter_recovery.py at smoke size: one record and one trajectory per part, the "real"
    images corrupted by the frozen preset, the learnable augmenter holding only the tested part."""
    out = tmp_path / "rec.json"
    run_script("parameter_recovery.py", "--work", tmp_path / "work", "--out", out,
               "--gamma-truth", "0.4", "--blur-truth", "1.5")
    rows = json.loads(out.read_text())
    assert [(r["part"], r["key"], r["truth"]) for r in rows] == \
        [("blur", "blur_max_vox", 1.5), ("gamma", "gamma_spread", 0.4)]
    assert all(len(r["trajectory"]) > 1 and r["inferred"] > 0 and r["steps"] == 12 for r in rows)
    assert rows[0]["trajectory"][0][1] == pytest.approx(0.3)  # started at --blur-init, not the truth
    assert out.with_suffix(".png").stat().st_size > 0
    manifest = json.loads((tmp_path / "work" / "R-gamma-0.4" / "model" / "manifest.json").read_text())
    assert manifest["training"]["hyperparameters"]["augmenter"] == \
        {"noise": False, "bias": False, "gamma": True, "gamma_init": 0.05}
    assert set(manifest["training"]["augmentation"]) == {"gamma_spread"}

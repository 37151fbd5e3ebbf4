import json
import math

import pytest
import torch

from l2s_pipelines.io.checkpoint import load_model_package
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.synth import SynthConfig, SynthGenerator
from l2s_pipelines.train.data import CorruptedSyntheticPairs, NoiseCorruption, SyntheticSource
from l2s_pipelines.train.config import TrainConfig
from l2s_pipelines.train.trainer import train

VALUES = [0, 2, 3, 4]


def _table():
    return LabelTable.from_dict([{"index": v, "name": f"label{v}"} for v in VALUES])


def _maps(n, seed, size=24):
    """Hand-made label maps (n, 1, size, size): background, a disc of 2 with a ring of 3, a box of 4."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * 6 + size / 2 - 3).tolist()
        r = float(torch.rand(1, generator=g) * 3 + 6)
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        m = torch.zeros(size, size, dtype=torch.long)
        m[d < r + 2] = 3
        m[d < r] = 2
        m[int(cy) - 2:int(cy) + 2, int(cx) - 2:int(cx) + 2] = 4
        maps.append(m)
    return torch.stack(maps).unsqueeze(1)


def _gen_cfg():
    return SynthConfig.all_off(rescale=True, max_intensity_sd=0.02).to_dict()


def _real(seed, sigma=0.1):
    synth = SynthGenerator(SynthConfig.from_dict(dict(_gen_cfg(), patch_size=[24, 24])), _table())
    return CorruptedSyntheticPairs(SyntheticSource(_maps(6, seed), synth), NoiseCorruption(sigma))


def _config(**kw):
    base = dict(ndim=2, patch_size=(24, 24), batch_size=2, steps=4, warmup_steps=1, lr=1e-2,
                lr_theta=1e-2, eval_every=2, val_size=2, checkpoint_every=2, log_every=1,
                unet={"widths": [4, 8], "convs_per_level": 1}, generator=_gen_cfg(), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _run(tmp_path, cfg, name="run", resume=False, stream=None):
    import io
    return train(cfg, label_maps=_maps(6, 0), real_train=_real(1), real_val=_real(2),
                 out_dir=tmp_path / name, resume=resume, label_table=_table(),
                 progress_stream=stream or io.StringIO())


def test_resume_continues_identically(tmp_path):
    full = _run(tmp_path, _config(steps=4), "full")
    _run(tmp_path, _config(steps=2), "split")
    resumed = _run(tmp_path, _config(steps=4), "split", resume=True)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    strip = lambda recs: [{k: v for k, v in r.items() if k != "time"} for r in recs]  # noqa: E731
    rec_full = [json.loads(x) for x in full.metrics_path.read_text().splitlines()]
    rec_res = [json.loads(x) for x in resumed.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rec_res] == [0, 1, 2, 3]
    assert strip(rec_full) == strip(rec_res)
    assert full.augmentation == resumed.augmentation


def test_metrics_log_and_model_package(tmp_path):
    res = _run(tmp_path, _config(steps=3, warmup_steps=1))
    recs = [json.loads(x) for x in res.metrics_path.read_text().splitlines()]
    assert [r["phase"] for r in recs] == ["synth", "l2s", "l2s"]
    assert all("aug/noise_sigma" in r and "aug/bias_exponent_2" in r for r in recs)
    assert recs[1]["real_loss"] is not None and recs[0]["real_loss"] is None
    assert "val_dice" in recs[1] and "val_dice" in recs[2] and "val_dice" not in recs[0]
    assert recs[2]["aug/noise_sigma"] != recs[0]["aug/noise_sigma"]  # theta is trained
    model, manifest = load_model_package(res.package_dir)
    assert manifest["training"]["method"] == "l2s-parametric"
    assert manifest["architecture"]["out_channels"] == len(VALUES)
    assert manifest["preprocessing"]["percentiles"] == [1.0, 99.0]
    assert manifest["training"]["hyperparameters"]["lr_theta"] == 1e-2


def test_synthseg_training_lowers_loss(tmp_path):
    res = _run(tmp_path, _config(method="synthseg", steps=40, batch_size=4, eval_every=40, loss="ce",
                                 unet={"widths": [8, 16], "convs_per_level": 2}))
    losses = [json.loads(x)["synthetic_loss"] for x in res.metrics_path.read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert res.augmenter is None and res.final_val_dice is not None and not math.isnan(res.final_val_dice)


@pytest.mark.parametrize("method,phases", [
    ("mixed", ["synth", "mixed", "mixed"]),
    ("finetune", ["synth", "synth", "real"]),
    ("supervised", ["real", "real", "real"]),
    ("oracle", ["synth", "synth", "synth"]),
    ("l2s-nonparametric", ["synth", "l2s", "l2s"]),
])
def test_every_method_runs(tmp_path, method, phases):
    cfg = _config(method=method, steps=2 if method == "finetune" else 3, finetune_steps=1,
                  oracle_noise_sigma=0.1, augmenter={"widths": [4, 4]} if "nonparam" in method else {})
    res = _run(tmp_path, cfg)
    recs = [json.loads(x) for x in res.metrics_path.read_text().splitlines()]
    assert [r["phase"] for r in recs] == phases
    if method == "l2s-nonparametric":
        assert "aug/head_weight_norm" in recs[-1] and recs[-1]["aug/head_weight_norm"] > 0


def test_log_lines_without_tty(tmp_path):
    import io
    stream = io.StringIO()
    _run(tmp_path, _config(steps=2), stream=stream)
    assert "step 2/2" in stream.getvalue()


def test_phases_with_hyper_every():
    cfg = _config(steps=6, warmup_steps=2, hyper_every=2)
    assert [cfg.phase(i) for i in range(6)] == ["synth", "synth", "l2s", "synth", "l2s", "synth"]
    assert [_config(steps=3).phase(i) for i in range(3)] == ["synth", "l2s", "l2s"]


def test_bad_config_and_missing_data(tmp_path):
    with pytest.raises(ValueError):
        TrainConfig(method="magic")
    with pytest.raises(ValueError):
        TrainConfig(ndim=3, patch_size=(8, 8))
    with pytest.raises(ValueError):
        TrainConfig(hyper_every=0)
    with pytest.raises(ValueError, match="real"):
        train(_config(), label_maps=_maps(2, 0), out_dir=tmp_path, label_table=_table())


def test_foreach_adam_step_matches_functional_step():
    from l2s_pipelines.train.functional_optim import FunctionalAdam
    g = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(5, 3, generator=g), "b": torch.randn(7, generator=g)}
    ref, fast = FunctionalAdam(1e-2), FunctionalAdam(1e-2)
    p_ref = {k: v.clone() for k, v in params.items()}
    p_fast = {k: v.clone() for k, v in params.items()}
    for _ in range(3):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        p_ref = ref.step(p_ref, grads)
        fast.step_(p_fast, grads)
    for k in params:
        torch.testing.assert_close(p_fast[k], p_ref[k], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fast.m[k], ref.m[k])
        torch.testing.assert_close(fast.v[k], ref.v[k])
    assert fast.step_count == ref.step_count == 3


def test_lr_schedule():
    cfg = _config(lr=1e-3, steps=100, lr_warmup=10, lr_schedule="cosine", lr_end=0.1)
    assert cfg.lr_at(0) == pytest.approx(1e-4)
    assert cfg.lr_at(10) == pytest.approx(1e-3)
    assert cfg.lr_at(55) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert cfg.lr_at(100) == pytest.approx(1e-4) and cfg.lr_at(500) == pytest.approx(1e-4)
    lrs = [cfg.lr_at(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    poly = _config(lr=1e-3, steps=100, lr_schedule="poly", lr_end=0.0, schedule_steps=200)
    assert poly.lr_at(100) == pytest.approx(1e-3 * 0.5 ** 0.9) and poly.lr_at(200) == pytest.approx(0)
    # Adam restarted at step 60 (a run started from a package's weights): warmed up again
    assert cfg.lr_at(60, restart=60) == pytest.approx(0.1 * cfg.lr_at(60))
    assert cfg.lr_at(70, restart=60) == pytest.approx(cfg.lr_at(70))
    with pytest.raises(ValueError, match="lr_schedule"):
        _config(lr_schedule="step")
    # on the clock: from lr at decay_from_s to the end at time_budget_s, whatever the step
    clock = _config(lr=1e-3, steps=100, lr_warmup=10, lr_schedule="cosine", lr_end=0.1,
                    time_budget_s=300.0, decay_from_s=100.0)
    assert clock.lr_at(5, time_s=50.0) == pytest.approx(1e-3)  # no step warm-up on the clock
    assert clock.lr_at(90, time_s=200.0) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert clock.lr_at(3, time_s=300.0) == pytest.approx(1e-4) == clock.lr_at(99, time_s=900.0)
    assert clock.lr_at(60, restart=60, time_s=200.0) == pytest.approx(0.1 * clock.lr_at(90, time_s=200.0))
    with pytest.raises(ValueError, match="decay_from_s"):
        _config(time_budget_s=100.0, decay_from_s=100.0)


def test_bf16_steps_log_lr_and_synthetic_validation(tmp_path):
    res = _run(tmp_path, _config(method="synthseg", steps=4, amp="bf16", synth_val_size=2,
                                 lr_schedule="cosine", lr_warmup=2))
    recs = [json.loads(x) for x in res.metrics_path.read_text().splitlines()]
    assert all(math.isfinite(r["synthetic_loss"]) for r in recs)
    assert [r["lr"] for r in recs][:2] == pytest.approx([1e-3, 1e-2 * 0.55])  # lr 1e-2
    assert [("synth_val_dice" in r) for r in recs] == [False, True, False, True]
    assert 0 <= recs[-1]["synth_val_dice"] <= 1


def test_init_from_package_continues_steps_and_curves(tmp_path):
    import shutil
    first = _run(tmp_path, _config(method="synthseg", steps=3), "first")
    pkg = tmp_path / "pkg"
    shutil.copytree(first.package_dir, pkg)
    shutil.copy(first.metrics_path, pkg / "metrics.jsonl")
    same = _run(tmp_path, _config(method="synthseg", steps=3, init_from=str(pkg)), "same")
    for (k, a), (_, b) in zip(first.model.state_dict().items(), same.model.state_dict().items()):
        assert torch.equal(a, b), k  # no step left to train: exactly the package's weights
    more = _run(tmp_path, _config(method="synthseg", steps=5, init_from=str(pkg), lr_warmup=2), "more")
    recs = [json.loads(x) for x in more.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    assert recs[3]["lr"] == pytest.approx(0.1 * 1e-2)  # Adam restarted: lr warmed up again
    from l2s_pipelines.errors import ModelError
    with pytest.raises(ModelError, match="another architecture"):
        _run(tmp_path, _config(method="synthseg", steps=4, init_from=str(pkg),
                               unet={"widths": [4, 4], "convs_per_level": 1}), "bad")


def test_time_budget_stops_with_checkpoint_and_package(tmp_path):
    """``time_budget_s``: the run stops after the step whose cumulative time reaches the budget,
    with a checkpoint and a package of that step (arms of an equal-CPU-time comparison); a
    resume with a larger budget continues from there."""
    res = _run(tmp_path, _config(steps=50, time_budget_s=1e-9))
    recs = [json.loads(x) for x in res.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in recs] == [0] and res.steps == 1
    _, manifest = load_model_package(res.package_dir)
    assert manifest["training"]["steps"] == 1 and "(1 steps" in manifest["description"]
    assert (tmp_path / "run" / "checkpoint").is_dir()
    more = _run(tmp_path, _config(steps=3, time_budget_s=0.0), resume=True)
    recs = [json.loads(x) for x in more.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2] and more.steps == 3

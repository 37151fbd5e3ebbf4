"""Model packages: round trip, corruption, truncation, label mismatch, no unpickling."""

import json
import pickle

import pytest
import torch

from l2s_pipelines.errors import ModelError
from l2s_pipelines.io import checkpoint
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.nn.unet import UNet, UNetConfig


def tiny_manifest(table: LabelTable, cfg: UNetConfig) -> dict:
    return {"name": "test-tiny", "description": "tiny untrained test network",
            "architecture": cfg.to_dict(), "labels": table.to_dict()["labels"],
            "preprocessing": {"orientation": "RAS", "voxel_size_mm": [1.0, 1.0, 1.0],
                              "intensity": "percentile", "percentiles": [1, 99]},
            "inference": {"mode": "2d", "planes": ["axial"]}, "training": {"method": "none"}}


@pytest.fixture()
def package(tmp_path):
    torch.manual_seed(0)
    table = LabelTable.default()
    cfg = UNetConfig(ndim=2, out_channels=len(table), widths=(4, 8), convs_per_level=1)
    model = UNet(cfg)
    path = checkpoint.save_model_package(tmp_path / "pkg", model, tiny_manifest(table, cfg))
    return path, model


def test_round_trip_same_outputs(package):
    path, model = package
    loaded, manifest = checkpoint.load_model_package(path)
    x = torch.rand(2, 1, 12, 10)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert manifest["weights"]["sha256"] == checkpoint.sha256_file(path / "model.safetensors")
    assert manifest["versions"]["torch"] == torch.__version__
    assert checkpoint.read_manifest(path) == manifest
    assert not list(path.glob(".*tmp*"))  # temporary files renamed away


def test_loading_never_unpickles(package, monkeypatch):
    path, _ = package

    def forbidden(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, _ = checkpoint.load_model_package(path)
    assert isinstance(model, UNet)


def _flip_tail_bytes(data: bytes) -> bytes:
    return data[:-64] + bytes(x ^ 0xFF for x in data[-64:-32]) + data[-32:]


@pytest.mark.parametrize("damage,message", [(_flip_tail_bytes, "sha256 mismatch"),
                                            (lambda data: data[:-100], "truncated")])
def test_damaged_weights_named(package, damage, message):
    path, _ = package
    wfile = path / "model.safetensors"
    wfile.write_bytes(damage(wfile.read_bytes()))
    with pytest.raises(ModelError, match=message) as exc:
        checkpoint.load_model_package(path)
    assert str(wfile) in str(exc.value)


def _drop_last_label(m):
    m["labels"] = m["labels"][:-1]


def _widen(m):
    m["architecture"]["widths"] = [4, 16]


@pytest.mark.parametrize("edit,message,named", [(_drop_last_label, "out_channels", "manifest.json"),
                                                (_widen, "do not match", "model.safetensors")])
def test_manifest_inconsistent_with_weights(package, edit, message, named):
    path, _ = package
    mpath = path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message) as exc:
        checkpoint.load_model_package(path)
    assert str(path / named) in str(exc.value)


@pytest.mark.parametrize("breakage", ["no_folder", "no_manifest", "bad_json", "no_weights"])
def test_missing_or_bad_files(package, breakage):
    path, _ = package
    target = {"no_folder": path.parent / "nope", "no_manifest": path / "manifest.json",
              "bad_json": path / "manifest.json", "no_weights": path / "model.safetensors"}[breakage]
    if breakage == "bad_json":
        target.write_text("{not json")
    elif breakage != "no_folder":
        target.unlink()
    with pytest.raises(ModelError) as exc:
        checkpoint.load_model_package(target if breakage == "no_folder" else path)
    assert str(target) in str(exc.value)


def test_read_manifest_does_not_import_torch(package):
    import subprocess
    import sys
    path, _ = package
    code = ("import sys; from l2s_pipelines.io.checkpoint import read_manifest; "
            f"m = read_manifest({str(path)!r}); assert m['name'] == 'test-tiny'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_model_dir_clear_error_or_path():
    try:
        path = checkpoint.default_model_dir()
    except ModelError as exc:
        assert "models/default" in str(exc)
    else:
        assert (path / "manifest.json").is_file()


def test_training_tensors_round_trip(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(7)}
    checkpoint.save_tensors(tmp_path / "ckpt.safetensors", t, {"epoch": 3})
    back, meta = checkpoint.load_tensors(tmp_path / "ckpt.safetensors")
    assert meta == {"epoch": 3} and torch.equal(back["a"], t["a"]) and int(back["step"]) == 7

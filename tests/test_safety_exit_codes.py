"""Issue 12, items 5 (3D window count) and 7: only documented exit codes, never a traceback,
for hostile filter files and internal errors; filter files with wrong types get a message about
the filter."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from conftest import affine_for, blob_volumes
from l2s_pipelines.bids_app import cli
from l2s_pipelines.errors import ModelError


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):
        monkeypatch.setenv(var, "1")


def run_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def write_filter(tmp_path, text: str):
    path = tmp_path / "filter.json"
    path.write_text(text)
    return path


FILTERS = {
    "deep": ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    "huge": (json.dumps({"t1w": {"subject": [f"s{i:07d}" for i in range(2_000_000)]}}), "larger than"),
    "dict_value": (json.dumps({"t1w": {"session": {"a": 1}}}), "'session' must be a string"),
    "nested_list": (json.dumps({"t1w": {"subject": [["01"]]}}), "'subject' must be a string"),
    "bool_value": (json.dumps({"t1w": {"run": True}}), "'run' must be a string"),
    "bad_entity": (json.dumps({"t1w": {"sub ject;": "01"}}), "entity names are"),
    "not_utf8": (None, "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(FILTERS))
def test_hostile_filter_files(tmp_path, bids_dir, model_dir, capsys, case):
    text, needle = FILTERS[case]
    if text is None:
        path = tmp_path / "filter.json"
        path.write_bytes(b'{"t1w": {"subject": "\xff"}}')
    else:
        path = write_filter(tmp_path, text)
    code, err = run_main([bids_dir, tmp_path / "out", "participant", "--model", model_dir, "-w", tmp_path / "w",
                          "--bids-filter-file", path], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-500:]
    assert str(path) in err and needle in err and "no T1w image" not in err, err[-500:]
    assert not (tmp_path / "out").exists()


def test_fifo_filter_file_does_not_block(tmp_path, bids_dir, model_dir, capsys):
    import os

    os.mkfifo(tmp_path / "filter.json")
    code, err = run_main([bids_dir, tmp_path / "out", "participant", "--model", model_dir, "-w", tmp_path / "w",
                          "--bids-filter-file", tmp_path / "filter.json"], capsys)
    assert code == 2 and "not a regular file" in err, err


def test_unexpected_error_is_one_line_with_exit_1(tmp_path, bids_dir, model_dir, capsys, monkeypatch):
    from l2s_pipelines.bids_app import run as run_mod

    def boom(opts, **kwargs):
        raise KeyError("weights")
    monkeypatch.setattr(run_mod, "run", boom)
    code, err = run_main([bids_dir, tmp_path / "out", "participant", "--model", model_dir, "-w", tmp_path / "w"],
                         capsys)
    assert code == cli.EXIT_INTERNAL == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "internal error: KeyError" in err


def test_3d_window_count_is_bounded(tmp_path, model_dir):
    """A 3D manifest whose patch and overlap ask for a huge number of windows is refused before
    the first window runs (the 0.999 overlap itself is refused by the manifest check)."""
    from l2s_pipelines.inference import Segmenter
    from l2s_pipelines.io.checkpoint import save_model_package
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.nn.unet import UNet, UNetConfig

    table = LabelTable.default()
    cfg = UNetConfig(ndim=3, out_channels=len(table), widths=(2,), convs_per_level=1)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.update(architecture=cfg.to_dict(), inference={"mode": "3d", "patch_size": [2, 2, 2], "overlap": 0.9})
    del manifest["weights"]
    pkg = save_model_package(tmp_path / "m3d", UNet(cfg), manifest)
    seg = Segmenter.from_package(pkg, "cpu", threads=1)
    img = nib.Nifti1Image(blob_volumes(0)[0], affine_for())
    with pytest.raises(ModelError, match="windows"):
        seg.segment(img, return_posteriors=False)

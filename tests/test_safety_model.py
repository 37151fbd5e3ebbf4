"""Issue 12, items 3, 4 (manifests) and 7 (manifest crashes): a model package can neither make
the app read files outside it nor drive its memory, and every bad package is a one-line error
with exit code 2 that never quotes a file's content."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import make_model_package
from l2s_pipelines.bids_app import cli
from l2s_pipelines.errors import ModelError
from l2s_pipelines.io import checkpoint as ck


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):
        monkeypatch.setenv(var, "1")


def edited_package(src, dest, edit):
    """Copy the package ``src`` to ``dest`` and apply ``edit(manifest)`` to its manifest."""
    shutil.copytree(src, dest)
    manifest = json.loads((dest / ck.MANIFEST_NAME).read_text())
    edit(manifest)
    (dest / ck.MANIFEST_NAME).write_text(json.dumps(manifest))
    return dest


def expect_exit_2(argv, capsys, *needles):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


SECRET = b"topsecret:x:0:0:topsecret:/home:/bin/sh\n" * 4


@pytest.mark.parametrize("name", ["../../../../secret", "/abs/secret", "../other/model.safetensors", "sub/x", ".."])
def test_weights_file_must_be_a_plain_name(tmp_path, model_dir, name, bids_dir, capsys):
    (tmp_path / "secret").write_bytes(SECRET)
    other = shutil.copytree(model_dir, tmp_path / "other")  # a valid weights file elsewhere
    name = name.replace("/abs/secret", str(tmp_path / "secret"))
    pkg = edited_package(model_dir, tmp_path / "pkgs" / "pkg", lambda m: m["weights"].update(file=name))
    with pytest.raises(ModelError, match="plain file name"):
        ck.load_model_package(pkg)
    err = expect_exit_2([bids_dir, tmp_path / "out", "participant", "--model", pkg, "-w", tmp_path / "w"],
                        capsys, "plain file name")
    assert str(struct.unpack("<Q", SECRET[:8])[0]) not in err and "topsecret" not in err
    assert (other / ck.WEIGHTS_NAME).is_file()


def test_weights_symlink_out_of_the_package_is_refused(tmp_path, model_dir):
    other = shutil.copytree(model_dir, tmp_path / "other")
    pkg = shutil.copytree(model_dir, tmp_path / "pkg")
    (pkg / ck.WEIGHTS_NAME).unlink()
    (pkg / ck.WEIGHTS_NAME).symlink_to(other / ck.WEIGHTS_NAME)
    with pytest.raises(ModelError, match="leads outside"):
        ck.load_model_package(pkg)


def test_safetensors_errors_never_echo_content(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(SECRET)
    with pytest.raises(ModelError) as info:
        ck.check_safetensors_file(path)
    assert str(struct.unpack("<Q", SECRET[:8])[0]) not in str(info.value) and "topsecret" not in str(info.value)
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc")  # header that is not UTF-8
    with pytest.raises(ModelError) as info:
        ck.check_safetensors_file(path)
    assert "0xff" not in str(info.value) and "\\xff" not in str(info.value)


def safetensors_blob(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_weights_entry_without_data_offsets(tmp_path, model_dir, bids_dir, capsys):
    import hashlib

    blob = safetensors_blob({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4)
    pkg = edited_package(model_dir, tmp_path / "pkg",
                         lambda m: m["weights"].update(sha256=hashlib.sha256(blob).hexdigest()))
    (pkg / ck.WEIGHTS_NAME).write_bytes(blob)
    with pytest.raises(ModelError, match="data_offsets"):
        ck.check_safetensors_file(pkg / ck.WEIGHTS_NAME)
    expect_exit_2([bids_dir, tmp_path / "out", "participant", "--model", pkg, "-w", tmp_path / "w"], capsys,
                  "data_offsets")


def _set(path: str, value):
    def edit(m):
        *keys, last = path.split(".")
        node = m
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[last] = value
    return edit


BAD_MANIFESTS = {
    "weights_string": (_set("weights", "model.safetensors"), "'weights' must be an object"),
    "huge_widths": (_set("architecture.widths", [100000, 100000]), "architecture.widths"),
    "wide_1024": (_set("architecture.widths", [1024]), "architecture.widths"),
    "deep": (_set("architecture.widths", [4] * 40), "architecture.widths"),
    "tiny_voxels": (_set("preprocessing.voxel_size_mm", [0.1, 0.1, 0.1]), "voxel_size_mm"),
    "nan_voxels": (_set("preprocessing.voxel_size_mm", "2"), "voxel_size_mm"),
    "bad_planes": (_set("inference.planes", ["axial", "axial"]), "inference.planes"),
    "unknown_plane": (_set("inference.planes", ["oblique"]), "inference.planes"),
    "overlap": (_set("inference.overlap", 0.999), "inference.overlap"),
    "patch": (_set("inference.patch_size", [10 ** 6, 10 ** 6]), "inference.patch_size"),
    "patch_3d": (lambda m: (m["architecture"].update(ndim=3), m["inference"].update(mode="3d", patch_size=[64, 64])),
                 "inference.patch_size"),
    "mode": (_set("inference.mode", "3d"), "inference.mode"),
    "flip_lr": (_set("inference.flip_lr", "yes"), "inference.flip_lr"),
    "even_slices": (_set("architecture.in_channels", 2), "architecture.in_channels"),
    "lr_merged_axial": (_set("inference.lr_merged_planes", ["axial"]), "inference.lr_merged_planes"),
    "lr_merged_only": (lambda m: m["inference"].update(planes=["sagittal"], lr_merged_planes=["sagittal"]),
                       "inference.lr_merged_planes"),
    "percentiles": (_set("preprocessing.percentiles", [99, 1]), "percentiles"),
    "colour": (_set("labels.1.color", "not-a-colour"), "colour of label 2"),
    "colour_type": (_set("labels.1.color", [1, 2, 3]), "colour of label 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_manifest_values_checked_before_building(tmp_path, model_dir, bids_dir, capsys, case):
    edit, needle = BAD_MANIFESTS[case]
    pkg = edited_package(model_dir, tmp_path / "pkg", edit)
    with pytest.raises(ModelError, match="manifest.json"):
        ck.read_manifest(pkg)
    expect_exit_2([bids_dir, tmp_path / "out", "participant", "--model", pkg, "-w", tmp_path / "w"], capsys,
                  needle, str(pkg / ck.MANIFEST_NAME))
    assert not (tmp_path / "out").exists()


def test_3d_overlap_and_patch_bounds_accept_real_values(tmp_path, model_dir):
    def edit(m):
        m["architecture"]["ndim"] = 3
        m["inference"].update(mode="3d", patch_size=[96, 96, 96], overlap=0.5)
    pkg = edited_package(model_dir, tmp_path / "pkg", edit)
    assert ck.read_manifest(pkg)["inference"]["overlap"] == 0.5


def test_mismatched_wide_architecture_refused_before_allocation(tmp_path):
    """Widths within bounds but far larger than the stored tensors: refused by comparing shapes on torch's meta device, under a memory cap that a real
    build would exceed."""
    pkg = make_model_package(tmp_path / "pkg")

    def edit(m):  # a 3D network of widths 512: about 155 M parameters, 620 MB of float32
        m["architecture"].update(ndim=3, widths=[512] * 8)
        m["inference"].update(mode="3d")
    edited = edited_package(pkg, tmp_path / "wide", edit)
    code = (
        "import resource, torch\n"
        "from l2s_pipelines.io.checkpoint import load_model_package\n"
        "from l2s_pipelines.errors import ModelError\n"
        "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (400 << 20), resource.RLIM_INFINITY))\n"
        f"try:\n    load_model_package({str(edited)!r})\n"
        "except ModelError as e:\n    print('MODELERROR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MODELERROR" in proc.stdout and "do not match" in proc.stdout, proc.stderr[-2000:]

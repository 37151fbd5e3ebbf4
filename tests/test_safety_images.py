"""Issue 12, item 4: declared image sizes are checked against the file and the memory budget
before any voxel is read (forged headers, gzip bombs, a model grid the budget cannot hold)."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import affine_for, blob_volumes, save_nifti
from l2s_pipelines.errors import InputError
from l2s_pipelines.io.checks import check_nifti_file
from l2s_pipelines.workflows import tasks

MIB = 1 << 20


def forged(path, shape, dtype=np.float32, voxels: bytes = b""):
    """A .nii.gz whose header declares ``shape`` but that holds only ``voxels`` of data."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_zooms((1.0,) * len(shape))
    hdr["vox_offset"] = 352
    blob = hdr.binaryblock + b"\0" * (352 - len(hdr.binaryblock)) + voxels
    path.write_bytes(gzip.compress(blob))
    return path


def _forbid_voxel_reads(monkeypatch):
    """Any read of voxel data through nibabel fails the test (the check must refuse first)."""
    import nibabel.arrayproxy

    def refuse(*args, **kwargs):
        raise AssertionError("voxel data was read before the size check refused the file")
    monkeypatch.setattr(nibabel.arrayproxy.ArrayProxy, "__array__", refuse)
    monkeypatch.setattr(nibabel.arrayproxy.ArrayProxy, "__getitem__", refuse)


@pytest.mark.parametrize("side", [700, 4000])
def test_forged_header_refused_before_allocation(tmp_path, side, monkeypatch):
    path = forged(tmp_path / "sub-01_T1w.nii.gz", (side,) * 3)
    assert path.stat().st_size < 200
    _forbid_voxel_reads(monkeypatch)
    with pytest.raises(InputError) as info:
        tasks._load_nifti(str(path), None)
    msg = str(info.value)
    assert str(path) in msg and f"{side}x{side}x{side}" in msg and "holds 0 bytes" in msg, msg


def test_truncated_uncompressed_file_refused(tmp_path):
    path = save_nifti(tmp_path / "a.nii", blob_volumes(0)[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or inconsistent header"):
        check_nifti_file(path)


def test_gzip_bomb_refused_by_budget_without_decompressing(tmp_path, monkeypatch):
    """512^3 zeros (134 MB of uint8) in a file of about 130 KB: refused from the header alone."""
    path = tmp_path / "bomb.nii.gz"
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape((512, 512, 512))
    hdr["vox_offset"] = 352
    zeros = b"\0" * (16 * MIB)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(hdr.binaryblock + b"\0" * (352 - len(hdr.binaryblock)))
        for _ in range(8):
            fh.write(zeros)
    assert path.stat().st_size < 2 * MIB
    _forbid_voxel_reads(monkeypatch)
    with pytest.raises(InputError) as info:
        tasks._load_nifti(str(path), 256 * MIB)
    assert "512x512x512" in str(info.value) and "more than the budget" in str(info.value)


def test_real_images_pass_and_budget_bounds_them(tmp_path):
    img = save_nifti(tmp_path / "ok.nii.gz", blob_volumes(0)[0])
    assert check_nifti_file(img, 64 * MIB).shape == (40, 40, 40)
    plain = save_nifti(tmp_path / "ok.nii", blob_volumes(0)[0])
    assert check_nifti_file(plain).shape == (40, 40, 40)
    with pytest.raises(InputError, match="more than the budget"):
        check_nifti_file(img, 100_000)  # 64000 voxels x 10 bytes does not fit 100 kB


def test_multi_member_gzip_counted(tmp_path):
    """A gzip of several members (ISIZE of the last one only) is measured by streaming."""
    src = save_nifti(tmp_path / "a.nii", blob_volumes(0)[0]).read_bytes()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(src[:1000]) + gzip.compress(src[1000:]))
    assert check_nifti_file(path).shape == (40, 40, 40)
    path.write_bytes(gzip.compress(src[:1000]) + gzip.compress(src[1000:-10]))
    with pytest.raises(InputError, match="holds"):
        check_nifti_file(path)


def test_model_grid_beyond_budget_refused_before_resampling(tmp_path, model_dir, monkeypatch):
    from l2s_pipelines.inference import Segmenter
    from l2s_pipelines.inference import segmenter as segmenter_module

    pkg = shutil.copytree(model_dir, tmp_path / "fine")
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["preprocessing"]["voxel_size_mm"] = [0.25] * 3  # 2 mm input -> 8^3 times the voxels
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter.from_package(pkg, "cpu", threads=1, memory_budget_bytes=256 * MIB)
    img = nib.Nifti1Image(blob_volumes(0)[0], affine_for())
    def refuse(*args, **kwargs):
        raise AssertionError("resampled before the memory check refused the image")
    monkeypatch.setattr(segmenter_module, "resample_to_voxel_size", refuse)
    with pytest.raises(InputError, match="more than the memory budget"):
        seg.segment(img, source_name="sub-01_T1w.nii.gz", return_posteriors=False)


def test_available_memory_honours_address_space_limit():
    import subprocess
    import sys

    code = ("import resource\n"
            "from l2s_pipelines.inference.memory import available_memory_bytes\n"
            "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + (300 << 20), resource.RLIM_INFINITY))\n"
            "print(available_memory_bytes())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 0 <= int(out.stdout.strip()) <= 300 << 20, out.stderr


def test_segmentation_task_refuses_an_image_over_budget_by_itself(tmp_path, model_dir, monkeypatch):
    """SegmentImage runs beside CheckImage, not after it: it refuses an image whose declared
    size exceeds its memory budget from the header, before reading any voxel."""
    from l2s_pipelines.workflows.tasks import SegmentImage

    path = forged(tmp_path / "sub-01_T1w.nii.gz", (1024, 1024, 1024), np.uint8)
    _forbid_voxel_reads(monkeypatch)
    task = SegmentImage(source=str(path), model_dir=str(model_dir), model_sha256="", device="cpu",
                        save_probseg=False, seed=0, nthreads=1, mem_mb=256)
    with pytest.raises(Exception) as info:
        task(cache_root=tmp_path / "work", worker="debug")
    assert "1024x1024x1024" in str(info.value) and "more than the budget" in str(info.value), str(info.value)
    assert str(path) in str(info.value)

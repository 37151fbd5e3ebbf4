"""Issue 12, items 5, 6 and 8: indexing a dataset never hangs and never costs more than its file
names: symlink loops, special files and non-UTF-8 names are skipped with a warning naming them,
and sidecars are not read. Each case runs in a subprocess with a timeout, so a hang fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import build_bids

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from l2s_pipelines.bids_app import queries
layout = queries.load_layout(sys.argv[1], validate=sys.argv[2] == "1")
images = queries.collect_images(layout)
print("IMAGES", len(images))
"""


def index(bids, validate=True, timeout=60):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(bids), "1" if validate else "0"],
                          capture_output=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc, time.perf_counter() - t0


@pytest.fixture()
def bids(tmp_path):
    return build_bids(tmp_path / "bids", {"01": [None], "02": [None]}, reference=False)


def test_symlink_loops_are_skipped(bids):
    (bids / "sub-01" / "anat" / "loop").symlink_to(bids / "sub-01")
    (bids / "sub-02" / "a").mkdir()
    (bids / "sub-02" / "a" / "b").symlink_to(bids / "sub-02")
    proc, _ = index(bids)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and b"IMAGES 2" in proc.stdout, err
    assert f"{bids}/sub-01/anat/loop: skipped, symlink loop" in err and f"{bids}/sub-02/a/b" in err


def test_fifo_named_like_a_sidecar_is_skipped(bids):
    os.mkfifo(bids / "sub-01" / "anat" / "sub-01_T1w.json.fifo")
    (bids / "sub-01" / "anat" / "sub-01_T1w.json").unlink()
    os.mkfifo(bids / "sub-01" / "anat" / "sub-01_T1w.json")
    proc, _ = index(bids)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and b"IMAGES 2" in proc.stdout, err
    assert f"{bids}/sub-01/anat/sub-01_T1w.json: skipped, special file" in err


def test_large_sidecar_is_not_read(bids):
    sidecar = bids / "sub-01" / "anat" / "sub-01_T1w.json"
    sidecar.write_text(json.dumps({f"Key{i}": i for i in range(200_000)}))
    assert sidecar.stat().st_size > 3_000_000
    proc, seconds = index(bids)
    assert proc.returncode == 0 and b"IMAGES 2" in proc.stdout, proc.stderr.decode()[-2000:]
    small, base = index(build_bids(bids.parent / "small", {"01": [None], "02": [None]}, reference=False))
    assert seconds < base + 3, (seconds, base)


def test_non_utf8_name_is_skipped_with_a_warning(bids):
    bad = os.fsencode(bids / "sub-01" / "anat") + b"/sub-01_\xff\xfe_T1w.nii.gz"
    with open(bad, "wb") as fh:
        fh.write(b"x")
    for validate in (True, False):
        proc, _ = index(bids, validate=validate)
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0 and b"IMAGES 2" in proc.stdout, err
        assert "sub-01_\\xff\\xfe_T1w.nii.gz: skipped, name is not valid UTF-8" in err, err


def test_oversized_dataset_description_refused(bids):
    from l2s_pipelines.bids_app import queries
    from l2s_pipelines.errors import InputError

    desc = bids / "dataset_description.json"
    desc.write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0", "Pad": "x" * (2 << 20)}))
    with pytest.raises(InputError, match="dataset_description.json: not a regular file of at most"):
        queries.load_layout(bids)

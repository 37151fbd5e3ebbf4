"""benchmarks/average_weights.py: the weight average ("model soup") of packages is exact, keeps
the last package's files and records its sources; mismatched packages are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from conftest import make_model_package

from l2s_pipelines.io.checkpoint import load_model_package, save_model_package

ROOT = Path(__file__).resolve().parents[1]


def _shifted(src: Path, dst: Path, shift: float) -> Path:
    model, manifest = load_model_package(src)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift)
    manifest["training"]["steps"] = int(shift * 10)
    return save_model_package(dst, model, manifest)


def _average(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "average_weights.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_average_is_the_tensorwise_mean_and_records_its_sources(tmp_path):
    base = make_model_package(tmp_path / "base")
    a, b = _shifted(base, tmp_path / "a", 1.0), _shifted(base, tmp_path / "b", 3.0)
    (b / "metrics.jsonl").write_text('{"step": 0}\n')
    out = _average(a, b, "-o", tmp_path / "soup")
    assert out.returncode == 0, out.stderr
    soup, manifest = load_model_package(tmp_path / "soup")  # sha256 and architecture checked
    ref, _ = load_model_package(base)
    for (name, got), want in zip(soup.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(got, want + 2.0, atol=1e-6), name
    assert [s["steps"] for s in manifest["training"]["weights_averaged_from"]] == [10, 30]
    assert manifest["training"]["steps"] == 30 and "mean of 2 packages" in manifest["description"]
    assert (tmp_path / "soup" / "metrics.jsonl").read_text() == '{"step": 0}\n'


def test_packages_of_another_architecture_are_refused(tmp_path):
    a = make_model_package(tmp_path / "a")
    b = make_model_package(tmp_path / "b", widths=(4, 4))
    out = _average(a, b, "-o", tmp_path / "soup")
    assert out.returncode == 2 and "architecture differs" in out.stderr
    assert not (tmp_path / "soup").exists()
    assert _average(a, "-o", tmp_path / "soup").returncode == 2

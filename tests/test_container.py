"""The Apptainer definition: parsed with spython and with tools/container_check.py's reader."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFINITION = REPO / "Singularity"


def _checker():
    spec = importlib.util.spec_from_file_location("container_check", REPO / "tools" / "container_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(DEFINITION)).recipe["spython-base"]


@pytest.fixture(scope="module")
def sections():
    return _checker().read_sections(DEFINITION)


def test_spython_parses_base_files_runscript(recipe):
    assert recipe.fromHeader.startswith("python:3.11")
    assert recipe.files == [". /opt/l2s-pipelines"]
    assert recipe.cmd == 'exec l2s-bids "$@"'
    assert any(label.startswith("Version ") for label in recipe.labels)


def test_environment_is_offline_and_home_free(recipe):
    env = dict(item.split("=", 1) for item in recipe.environ)
    assert env["TEMPLATEFLOW_HOME"] == "/opt/templateflow"
    assert env["NO_ET"] == "1" and env["NIPYPE_NO_ET"] == "1" and env["PYTHONNOUSERSITE"] == "1"
    assert env["MPLCONFIGDIR"].startswith("/tmp/")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert var in env
    assert not any("$HOME" in value or "~" in value for value in env.values())


def test_post_installs_gpu_torch_and_package_and_prefetches_templates(sections):
    checker = _checker()
    steps = checker.pip_steps(sections["post"])
    flat = [" ".join(s) for s in steps]
    assert any(s.startswith("torch") for s in flat), flat
    assert not any("constraints-cpu" in s or "download.pytorch.org/whl/cpu" in s for s in flat)
    assert any(str(REPO) in s for s in flat)  # /opt/l2s-pipelines rewritten to the checkout
    post = "\n".join(sections["post"])
    assert "TEMPLATEFLOW_HOME=/opt/templateflow" in post
    for needed in ("'MNI152NLin2009cAsym'", "'T1w'", "'brain'", "'CSF'", "'GM'", "'WM'"):
        assert needed in post
    # the prefetch is verified with the same lookup the app uses at run time
    assert "get_template_files('MNI152NLin2009cAsym'" in post


def test_test_section_runs_a_self_check(sections):
    body = "\n".join(sections["test"])
    assert "l2s-demo" in body and "_dseg.nii.gz" in body
    assert "mktemp -d" in body  # writes only to a temporary folder (read-only image)


def test_reader_joins_continuations_and_environment_defaults(tmp_path, monkeypatch):
    checker = _checker()
    f = tmp_path / "def"
    f.write_text("Bootstrap: docker\n%post\n    python -m pip install a \\\n      b\n"
                 "%environment\n    export A=${ZZ_UNSET_VAR:-4}\n    export B=x\n")
    s = checker.read_sections(f)
    assert checker.pip_steps(s["post"]) == [["a", "b"]]
    monkeypatch.delenv("ZZ_UNSET_VAR", raising=False)
    assert checker.environment(s["environment"]) == {"A": "4", "B": "x"}
    monkeypatch.setenv("ZZ_UNSET_VAR", "2")
    assert checker.environment(s["environment"])["A"] == "2"

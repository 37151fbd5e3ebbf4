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
    assert env["XDG_CACHE_HOME"].startswith("/tmp/")  # Pydra's hash cache: no writable $HOME needed
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


DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_agrees_with_the_singularity_definition(sections):
    checker = _checker()
    assert checker.is_dockerfile(DOCKERFILE) and not checker.is_dockerfile(DEFINITION)
    docker = checker.docker_sections(DOCKERFILE)
    assert checker.compare_definitions(docker, sections) == []
    assert docker["runscript"] == ['exec l2s-bids "$@"'] and docker["files"] == [". /opt/l2s-pipelines"]
    assert docker["test"] == sections["test"]  # the self-test, split into the same commands
    env = checker.environment(docker["environment"], resolve=False)
    assert env["TEMPLATEFLOW_HOME"] == "/opt/templateflow" and env["NIPYPE_NO_ET"] == "1"
    assert not any("$HOME" in v or "~" in v for v in env.values())
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "benchmarks/results"} <= set(ignored)


@pytest.mark.parametrize("old, new, problem", [
    ('"torch>=2.2"', '"torch==2.2.0"', "pip steps"),
    ("MPLCONFIGDIR=/tmp/matplotlib", "MPLCONFIGDIR=/root/.mpl", "environment MPLCONFIGDIR"),
    ('ENTRYPOINT ["l2s-bids"]', 'ENTRYPOINT ["l2s-segment"]', "entry point"),
    ("--n-subjects 1", "--n-subjects 2", "self-test"),
    ("FROM python:3.11-slim-bookworm", "FROM python:3.12-slim", "base image"),
    ("resolution=r", "resolution=1", "python -c build steps"),
])
def test_checker_reports_a_dockerfile_that_drifts(tmp_path, capsys, old, new, problem):
    checker = _checker()
    text = DOCKERFILE.read_text()
    assert old in text
    drifted = tmp_path / "Dockerfile"
    drifted.write_text(text.replace(old, new))
    problems = checker.compare_definitions(checker.docker_sections(drifted), checker.read_sections(DEFINITION))
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    venv = tmp_path / "venv"  # refused before anything is installed
    assert checker.main(["--definition", str(drifted), "--venv", str(venv)]) == 1
    assert not venv.exists() and problem in capsys.readouterr().err


def test_dockerfile_reader_forms(tmp_path):
    checker = _checker()
    f = tmp_path / "Dockerfile"
    f.write_text("# syntax=docker/dockerfile:1\nFROM base:1\nENV A=1 \\\n    B='x y'\nENV C 3\n"
                 "RUN python -m pip install a \\\n      b\n# container_check: test\n"
                 "RUN set -eu; x=\"a;b\"; test -n \"$x\" || { echo no; exit 1; }\nCMD l2s-bids --help\n")
    s = checker.docker_sections(f)
    assert s["header"] == ["From: base:1"] and checker.pip_steps(s["post"]) == [["a", "b"]]
    assert checker.environment(s["environment"]) == {"A": "1", "B": "x y", "C": "3"}
    assert s["test"] == ["set -eu", 'x="a;b"', 'test -n "$x" || { echo no; exit 1; }']
    assert s["runscript"] == ['exec l2s-bids --help "$@"']

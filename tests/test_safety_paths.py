"""Issue 12, items 1-2: the app never deletes or writes files it did not create.

``-w`` pointed at a folder with other people's files is refused (nothing deleted); cleaning a
work folder the app owns touches only Pydra's own layout; output and work folders are checked
on their real paths, so a symlink into the input dataset is refused and the dataset is never
written. All runs stop at the dataset-level checks (exit 2), in-process and in well under a
second each.
"""

from __future__ import annotations

import os

import pytest

from l2s_pipelines.bids_app import cli
from l2s_pipelines.workflows import execution

HEX = "0123456789abcdef" * 2


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):
        monkeypatch.setenv(var, "1")


def snapshot(root):
    """{relative path: (size, mtime_ns)} of every file and link under ``root`` (links not followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def run_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def make_project(root):
    """A folder someone else owns, with names the old sweep deleted."""
    files = ["poetry.lock", "app/Cargo.lock", "app/sub/yarn.lock", "results_info.json",
             f"python-{HEX}/_error.pklz", f"python-{HEX}/_result.pklz"]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("precious")
    return files


def test_foreign_work_dir_is_refused_and_untouched(tmp_path, bids_dir, model_dir, capsys):
    project = tmp_path / "project"
    files = make_project(project)
    before = snapshot(project)
    code, err = run_main([bids_dir, tmp_path / "out", "participant", "--model", model_dir, "-w", project], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(project) in err and "did not create" in err
    assert snapshot(project) == before and all((project / f).read_text() == "precious" for f in files)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["parent_of_bids", "parent_of_output", "is_output"])
def test_work_dir_containing_inputs_or_outputs_is_refused(tmp_path, model_dir, capsys, where):
    from conftest import build_bids

    top = tmp_path / "top"
    bids = build_bids(top / "bids", {"01": [None]}, reference=False)
    out = top / "out" if where != "parent_of_bids" else tmp_path / "out"
    work = {"parent_of_bids": top, "parent_of_output": top, "is_output": out}[where]
    code, err = run_main([bids, out, "participant", "--model", model_dir, "-w", work], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "work folder" in err, err
    assert not out.exists() or where == "is_output"


def test_clean_owned_work_dir_touches_only_pydra_layout(tmp_path):
    work = tmp_path / "work"
    execution.claim_work_dir(work)
    assert (work / execution.WORK_MARKER).is_file()
    job = work / f"python-{HEX}"
    job.mkdir()
    (work / f"python-{HEX}.lock").write_text("")
    (job / "_error.pklz").write_bytes(b"x")
    (job / "_result.pklz").write_bytes(b"x")
    (work / f"{HEX}_info.json").write_text("{}")
    # things a user dropped in later, or deeper folders: never Pydra's top-level layout
    dropped = ["poetry.lock", "app/Cargo.lock", "app/sub/_error.pklz", "results_info.json", "notes.lock"]
    for f in dropped:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("precious")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "_error.pklz").write_text("precious")
    (work / f"workflow-{HEX}").symlink_to(outside)
    assert execution.clean_work_dir(work) == {"locks": 1, "errors": 1}
    assert not (job / "_error.pklz").exists() and not (job / "_result.pklz").exists()
    assert not (work / f"{HEX}_info.json").exists()
    assert all((work / f).read_text() == "precious" for f in dropped)
    assert (outside / "_error.pklz").read_text() == "precious"


def test_unmarked_pydra_cache_is_adopted(tmp_path):
    work = tmp_path / "work"
    (work / f"python-{HEX}").mkdir(parents=True)
    (work / f"python-{HEX}.lock").write_text("")
    execution.check_work_dir(work)  # an older run's cache: accepted
    execution.clean_work_dir(work)
    assert (work / execution.WORK_MARKER).is_file() and not (work / f"python-{HEX}.lock").exists()


def test_output_symlink_into_dataset_is_refused(tmp_path, bids_dir, model_dir, capsys):
    before = snapshot(bids_dir)
    link = tmp_path / "out-link"
    link.symlink_to(bids_dir)
    nested = tmp_path / "nested-link"
    nested.symlink_to(bids_dir / "sub-01")
    dotted = tmp_path / "x" / ".." / "out-link"
    for out in (link, nested / "anat", dotted):
        code, err = run_main([bids_dir, out, "participant", "--model", model_dir, "-w", tmp_path / "w"], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "output" in err, err
    # work folder reached through a symlink into the dataset
    code, err = run_main([bids_dir, tmp_path / "out", "participant", "--model", model_dir, "-w", link / "work"],
                         capsys)
    assert code == 2 and "inside the input" in err, err
    assert snapshot(bids_dir) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


def test_symlinked_subfolder_of_output_into_dataset_is_refused(tmp_path, bids_dir, model_dir, capsys):
    before = snapshot(bids_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01").symlink_to(bids_dir / "sub-01")
    code, err = run_main([bids_dir, out, "participant", "--model", model_dir, "-w", tmp_path / "w"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "leads outside" in err, err
    assert snapshot(bids_dir) == before

"""Issue 8, access: a folder import from the browser reads only below the import roots.

The server reads a typed path with its own rights; before the roots, ``/etc`` and the
administrator's home were importable. A missing folder and one outside the roots get the same
message (the form must not tell which folders exist), links are judged by where they point,
and failures take back what they wrote, whatever the exception.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import services.data.imports as imports
from services.context import Kensa
from services.data.imports import (
    IMPORT_ROOTS_ENV,
    ImportRefused,
    allowed_folder,
    import_data,
    import_roots,
    start_import_job,
)
from services.data.projects import list_projects
from services.jobs import api
from tests.synthetic import make_mvtec, texture, write_png


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    monkeypatch.setenv(IMPORT_ROOTS_ENV, str(folder))
    return folder.resolve()


def _refusal(ctx: Kensa, folder: Path | str) -> str:
    with pytest.raises(ImportRefused) as caught:
        import_data(ctx, "p", folder=folder, create=True)
    return str(caught.value)


def test_outside_and_missing_get_the_same_message(ctx: Kensa, root: Path, tmp_path: Path) -> None:
    outside = make_mvtec(tmp_path / "outside", n_train=2, n_test_good=1, n_defect=1, size=32)
    missing = root / "nope"
    for folder in (outside, missing, Path("/etc"), Path("/")):
        assert _refusal(ctx, folder) == (
            f"no such folder under the import folders ({root}): {folder}"
        )
    with pytest.raises(ImportRefused, match="no such folder under the import folders"):
        start_import_job(ctx, "p", folder=str(outside), create=True)  # refused before a job
    assert api.list_jobs(ctx) == [] and list_projects(ctx) == []
    assert not (ctx.home / "imports").exists()


def test_inside_a_root_is_imported(ctx: Kensa, root: Path) -> None:
    data = make_mvtec(root / "line3", n_train=2, n_test_good=1, n_defect=1, size=32)
    job_id = start_import_job(ctx, "line3", folder=str(data), create=True)
    assert api.get_job(ctx, job_id)["payload"]["folder"] == str(data)
    assert api.run_inline(ctx, job_id)["added"] == 4


def test_links_are_judged_by_their_target(ctx: Kensa, root: Path, tmp_path: Path) -> None:
    outside = make_mvtec(tmp_path / "outside", n_train=2, n_test_good=1, n_defect=1, size=32)
    (root / "etc").symlink_to("/etc")
    (root / "elsewhere").symlink_to(outside)
    for link in (root / "etc", root / "elsewhere"):
        assert _refusal(ctx, link) == f"no such folder under the import folders ({root}): {link}"
    assert list_projects(ctx) == []


def test_a_tampered_job_payload_is_checked_again(ctx: Kensa, root: Path) -> None:
    """The job handler goes through import_data, so a row written by hand is refused too."""
    job_id = api.submit(ctx, "import", {"name": "x", "create": True, "folder": "/etc"})
    with pytest.raises(api.JobFailed, match="no such folder under the import folders"):
        api.run_inline(ctx, job_id)
    assert list_projects(ctx) == []


def test_system_folders_are_never_roots(
    ctx: Kensa, root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(IMPORT_ROOTS_ENV, os.pathsep.join(["/", "/etc", "/usr/share", str(root)]))
    with caplog.at_level(logging.WARNING, logger=imports.__name__):
        assert import_roots(ctx) == [root]
    warned = caplog.text
    assert "/etc is a system folder" in warned and "/usr/share is a system folder" in warned
    assert _refusal(ctx, "/etc") == f"no such folder under the import folders ({root}): /etc"


def test_default_roots_are_the_home_folder_and_the_inbox(
    ctx: Kensa, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(IMPORT_ROOTS_ENV, raising=False)
    inbox = ctx.home / "inbox"
    assert import_roots(ctx) == [Path.home().resolve(), inbox]
    assert inbox.is_dir()
    make_mvtec(inbox / "drop", n_train=2, n_test_good=1, n_defect=1, size=32)
    assert allowed_folder(ctx, str(inbox / "drop")) == inbox / "drop"


# --------------------------------------------------------------------------- failures


def test_any_failure_is_a_plain_message_and_takes_back_the_files(
    ctx: Kensa, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while indexing: the job says so in words; no folder, no project is left."""
    data = make_mvtec(root / "line3", n_train=2, n_test_good=1, n_defect=1, size=32)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(ctx.home / "kensa.db"))

    real = imports.create_project
    monkeypatch.setattr(imports, "create_project", disk_full)
    job_id = start_import_job(ctx, "line3", folder=str(data), create=True)
    with pytest.raises(api.JobFailed):
        api.run_inline(ctx, job_id)
    job = api.get_job(ctx, job_id)
    assert job["status"] == "failed"
    assert job["error"] == f"{ctx.home / 'kensa.db'}: No space left on device"
    assert list_projects(ctx) == [] and list((ctx.home / "imports").iterdir()) == []

    # A re-import into an existing project that fails takes back only the files it added.
    monkeypatch.setattr(imports, "create_project", real)
    import_data(ctx, "line3", folder=data, create=True)
    project_dir = Path(list_projects(ctx)[0]["data_root"])
    before = sorted(p.relative_to(project_dir) for p in project_dir.rglob("*"))
    extra = root / "more"
    rng = np.random.default_rng(7)
    for i in range(3):
        write_png(extra / "train" / "good" / f"new_{i}.png", texture(rng, 32))
    monkeypatch.setattr(imports, "create_project", disk_full)
    with pytest.raises(OSError, match="No space left"):
        import_data(ctx, "line3", folder=extra, create=False)
    assert sorted(p.relative_to(project_dir) for p in project_dir.rglob("*")) == before

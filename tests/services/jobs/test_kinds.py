"""Every job kind end to end on tiny generated data, through the same runner a worker uses.

Jobs are submitted like a page does (a row plus a queue message) and then run here with
``run_inline``; the worker processes themselves are exercised in test_workers.py.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from db.models import Job, utcnow
from services.context import Kensa
from services.data.imports import start_import_job
from services.history.versions import history, start_bank_update_job
from services.inference.batches import list_batches
from services.jobs import api
from services.jobs.queue import get_queue
from services.jobs.registry import selftest_markers
from services.training.project import (
    cancel_training,
    get_model_version,
    request_training,
    start_training_job,
    train_project,
)
from services.training.setup import active_runs
from tests.services.conftest import PARAMS, SHOTS


@pytest.fixture(autouse=True)
def import_roots_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folder imports read the test's own temp folder, which is outside the default roots."""
    monkeypatch.setenv("KENSA_IMPORT_ROOTS", str(tmp_path))


def test_selftest_records_one_run_and_the_queue_holds_the_message(ctx: Kensa) -> None:
    job_id = api.submit(ctx, "selftest", {"seconds": 0.2})
    assert get_queue(ctx.home).pending() == 1
    assert api.get_job(ctx, job_id)["status"] == "queued"
    result = api.run_inline(ctx, job_id)
    job = api.get_job(ctx, job_id)
    assert (job["status"], job["progress"], job["attempts"], job["error"]) == ("done", 1.0, 1,
                                                                              None)
    assert job["result"] == result and len(selftest_markers(ctx.home, job_id)) == 1
    with pytest.raises(RuntimeError, match="not queued"):  # a second delivery does nothing
        api.run_inline(ctx, job_id)
    assert len(selftest_markers(ctx.home, job_id)) == 1


def test_failure_is_a_plain_message(ctx: Kensa) -> None:
    with pytest.raises(api.JobFailed, match="^the camera fell off$"):
        api.submit_inline(ctx, "selftest", {"seconds": 0, "fail": "the camera fell off"})
    (job,) = api.list_jobs(ctx)
    assert (job["status"], job["error"]) == ("failed", "the camera fell off")
    with pytest.raises(LookupError, match="unknown job kind"):
        api.submit(ctx, "no-such-kind", {})


def test_train_job_keeps_the_model_version_in_step(ctx: Kensa, project: str) -> None:
    mv = train_project(ctx, project, shots=SHOTS, seed=0, params=PARAMS)
    (job,) = api.list_jobs(ctx, project)
    assert (job["kind"], job["status"], job["progress"]) == ("train", "done", 1.0)
    assert job["result"]["model_version_id"] == mv["id"] == job["payload"]["model_version_id"]
    assert job["result"]["metrics"]["image_auroc"] == mv["metrics"]["image_auroc"]
    assert get_model_version(ctx, mv["id"])["status"] == "done"


def test_queued_training_cancelled_from_the_page_ends_job_and_run(ctx: Kensa,
                                                                   project: str) -> None:
    mv_id = request_training(ctx, project, SHOTS, 0, PARAMS)
    job_id = start_training_job(ctx, mv_id)
    assert active_runs(ctx, project)[0]["job_id"] == job_id
    assert cancel_training(ctx, mv_id)
    assert api.get_job(ctx, job_id)["status"] == "cancelled"
    assert get_model_version(ctx, mv_id)["status"] == "cancelled"
    assert active_runs(ctx, project) == []


def test_cancel_during_training_ends_it_cancelled(ctx: Kensa, project: str) -> None:
    mv_id = request_training(ctx, project, SHOTS, 0, PARAMS)
    job_id = start_training_job(ctx, mv_id)
    other = Kensa.create(ctx.home, ctx.database_url, migrate=False)  # as a page would

    def echo(stage: str, fraction: float) -> None:
        if stage == "extracting features":
            api.cancel(other, job_id)

    with pytest.raises(api.JobCancelled):
        api.run_inline(ctx, job_id, echo)
    other.close()
    job = api.get_job(ctx, job_id)
    assert job["status"] == "cancelled" and job["cancel_requested"]
    assert get_model_version(ctx, mv_id)["status"] == "cancelled"


def test_reaper_requeues_then_fails_a_dead_training(ctx: Kensa, project: str) -> None:
    mv_id = request_training(ctx, project, SHOTS, 0, PARAMS)
    job_id = start_training_job(ctx, mv_id)
    with ctx.session() as s:  # a worker claimed it, started the run, then was SIGKILLed
        import db.jobs as jobs_repo
        import db.repositories as repo

        jobs_repo.claim_job(s, job_id, "gone:1:worker-x")
        repo.start_model_version(s, mv_id, stage="extracting features")
    _silence(ctx, job_id, 200)
    (acted,) = api.reap_stale(ctx)
    assert acted["action"] == "requeued" and "no heartbeat for 200 s" in acted["error"]
    assert get_model_version(ctx, mv_id)["status"] == "queued"  # the retry trains it again
    assert get_queue(ctx.home).pending() == 2  # the original message and the retry's
    with ctx.session() as s:
        jobs_repo.claim_job(s, job_id, "gone:2:worker-y")
        repo.start_model_version(s, mv_id)
    _silence(ctx, job_id, 200)
    job = api.get_job(ctx, job_id)  # reading status reaps
    assert job["status"] == "failed" and job["attempts"] == 2
    assert job["error"].startswith("the worker stopped (gone:2:worker-y; no heartbeat for 200 s)")
    run = get_model_version(ctx, mv_id)
    assert run["status"] == "failed" and run["error"] == job["error"]


def _silence(ctx: Kensa, job_id: int, seconds: float) -> None:
    with ctx.session() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def _zip_of(folder: Path) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, f"line7/{f.relative_to(folder).as_posix()}")
    buf.seek(0)
    return buf


def test_import_jobs_folder_and_zip(ctx: Kensa, dataset: Path) -> None:
    job_id = start_import_job(ctx, "from-folder", folder=str(dataset), create=True)
    stages: list[str] = []
    result = api.run_inline(ctx, job_id, lambda stage, f: stages.append(stage))
    assert result["found"] == result["added"] == 12 and result["imported"] >= 12
    assert {"copying images", "reading and hashing images"} <= set(stages)
    assert api.get_job(ctx, job_id)["result"]["added"] == 12

    job_id = start_import_job(ctx, "from-zip", zip_file=_zip_of(dataset), create=True)
    upload = ctx.resolve(api.get_job(ctx, job_id)["payload"]["zip"])
    assert upload.is_file() and upload.parent == ctx.home / "uploads"
    assert api.run_inline(ctx, job_id)["added"] == 12
    assert not upload.exists()  # the upload was only for this job

    with pytest.raises(ValueError, match="already exists"):  # refused before any job
        start_import_job(ctx, "from-zip", folder=str(dataset), create=True)


def test_cancelled_import_of_a_new_project_leaves_nothing(ctx: Kensa, dataset: Path) -> None:
    job_id = start_import_job(ctx, "half", folder=str(dataset), create=True)

    def echo(stage: str, fraction: float) -> None:
        if fraction > 0.2:
            api.cancel(ctx, job_id)

    with pytest.raises(api.JobCancelled):
        api.run_inline(ctx, job_id, echo)
    assert api.get_job(ctx, job_id)["status"] == "cancelled"
    assert not (ctx.home / "imports" / "half").exists()


def test_score_and_update_bank_jobs(ctx: Kensa, trained: dict[str, Any], project: str,
                                    dataset: Path, new_goods: Callable[[int, int], Path]
                                    ) -> None:
    _, result = api.submit_inline(ctx, "score_batch", {
        "name": project, "path": str(dataset / "test"), "batch": "line-1"})
    assert result["scored"] == 6 and len(result["predictions"]) == 6
    (job,) = api.list_jobs(ctx, project, kinds=["score_batch"])
    assert job["result"]["scored"] == 6 and "predictions" not in job["result"]
    assert [b["name"] for b in list_batches(ctx, project)][-1] == "line-1"

    job_id = start_bank_update_job(ctx, project, [new_goods(2, 7)], note="two more")
    bank = api.run_inline(ctx, job_id)
    assert bank["version"] == 2
    assert api.get_job(ctx, job_id)["result"]["version"] == 2
    assert history(ctx, project)["memory_bank_versions"][-1]["note"] == "two more"

"""db.jobs: the conditional updates that make a job run once and a dead worker visible."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, update

import db.jobs as jobs
import db.repositories as repo
from db.models import Job, utcnow
from db.session import session_scope


def _job(engine: Engine, **kw: object) -> int:
    with session_scope(engine) as s:
        return jobs.create_job(s, "selftest", {"seconds": 1}, **kw).id  # type: ignore[arg-type]


def test_claim_is_exclusive_and_counts_attempts(engine: Engine) -> None:
    job_id = _job(engine)
    with session_scope(engine) as s:
        assert jobs.claim_job(s, job_id, "a:1:x")
    with session_scope(engine) as s:
        assert not jobs.claim_job(s, job_id, "b:2:y")  # a duplicate delivery does nothing
        job = jobs.get_job(s, job_id)
        assert (job.status, job.worker, job.attempts) == ("running", "a:1:x", 1)
        assert job.started_at is not None and job.heartbeat_at is not None


def test_report_and_finish_only_for_the_owner(engine: Engine) -> None:
    job_id = _job(engine)
    with session_scope(engine) as s:
        jobs.claim_job(s, job_id, "a")
    with session_scope(engine) as s:
        assert jobs.report_job(s, job_id, "a", progress=1.7, stage="working") is False
        assert jobs.report_job(s, job_id, "intruder", progress=0.1) is None
        assert not jobs.finish_job(s, job_id, "intruder", "done", result={"x": 1})
        job = jobs.get_job(s, job_id)
        assert (job.progress, job.stage) == (1.0, "working")  # clamped
    with session_scope(engine) as s:
        assert jobs.finish_job(s, job_id, "a", "done", result={"x": 1})
        assert not jobs.finish_job(s, job_id, "a", "failed", error="late")  # ended once
        job = jobs.get_job(s, job_id)
        assert (job.status, job.result, job.error) == ("done", {"x": 1}, None)
        assert job.finished_at is not None
    with session_scope(engine) as s, pytest.raises(ValueError, match="final status"):
        jobs.finish_job(s, job_id, "a", "running")


def test_cancel_queued_ends_it_running_flags_it(engine: Engine) -> None:
    queued, running = _job(engine), _job(engine)
    with session_scope(engine) as s:
        jobs.claim_job(s, running, "w")
    with session_scope(engine) as s:
        assert jobs.request_cancel(s, queued) == "cancelled"
        assert jobs.request_cancel(s, running) == "running"
    with session_scope(engine) as s:
        assert not jobs.claim_job(s, queued, "w")  # its queue message finds nothing to do
        assert jobs.get_job(s, queued).status == "cancelled"
        assert jobs.report_job(s, running, "w") is True  # the worker learns at its next report
        assert jobs.finish_job(s, running, "w", "cancelled", error="cancelled")
        assert jobs.request_cancel(s, running) is None  # already ended
        assert jobs.request_cancel(s, 999) is None


def _age(engine: Engine, job_id: int, seconds: float) -> None:
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_stale_jobs_are_requeued_or_failed_and_the_old_worker_loses(engine: Engine) -> None:
    job_id = _job(engine, max_attempts=2)
    fresh = _job(engine)
    with session_scope(engine) as s:
        jobs.claim_job(s, job_id, "dead")
        jobs.claim_job(s, fresh, "alive")
    _age(engine, job_id, 120)
    with session_scope(engine) as s:
        (stale,) = jobs.stale_jobs(s, utcnow() - timedelta(seconds=90))
        assert stale.id == job_id
        assert jobs.abandon_job(s, stale, "worker stopped", requeue=True)
        assert not jobs.abandon_job(s, stale, "again", requeue=True)  # once only
    with session_scope(engine) as s:
        job = jobs.get_job(s, job_id)
        assert (job.status, job.worker, job.error) == ("queued", None, "worker stopped")
        assert jobs.report_job(s, job_id, "dead") is None  # the presumed-dead worker lost it
        assert jobs.claim_job(s, job_id, "second")
    _age(engine, job_id, 120)
    with session_scope(engine) as s:
        (stale,) = jobs.stale_jobs(s, utcnow() - timedelta(seconds=90))
        assert stale.attempts == 2
        assert jobs.abandon_job(s, stale, "the worker stopped", requeue=False)
    with session_scope(engine) as s:
        job = jobs.get_job(s, job_id)
        assert (job.status, job.error) == ("failed", "the worker stopped")
        assert job.finished_at is not None


def test_a_heartbeat_after_the_reaper_looked_wins(engine: Engine) -> None:
    job_id = _job(engine)
    with session_scope(engine) as s:
        jobs.claim_job(s, job_id, "slow")
    _age(engine, job_id, 120)
    with session_scope(engine) as s:
        (stale,) = jobs.stale_jobs(s, utcnow() - timedelta(seconds=90))
    with session_scope(engine) as s:
        assert jobs.report_job(s, job_id, "slow") is False  # alive after all
    with session_scope(engine) as s:
        assert not jobs.abandon_job(s, stale, "stopped", requeue=False)
        assert jobs.get_job(s, job_id).status == "running"


def test_list_filters_and_project_deletion_keeps_the_record(engine: Engine) -> None:
    with session_scope(engine) as s:
        project = repo.create_project(s, "p", "/data")
        a = jobs.create_job(s, "train", {"model_version_id": 1}, project_id=project.id).id
        b = jobs.create_job(s, "selftest").id
        jobs.claim_job(s, b, "w")
    with session_scope(engine) as s:
        assert [j.id for j in jobs.list_jobs(s)] == [b, a]
        assert [j.id for j in jobs.list_jobs(s, project_id=project.id)] == [a]
        assert [j.id for j in jobs.list_jobs(s, statuses=["running"])] == [b]
        assert [j.id for j in jobs.list_jobs(s, kinds=["train"])] == [a]
    with session_scope(engine) as s:
        repo.delete_project(s, project.id)
    with session_scope(engine) as s:
        assert jobs.get_job(s, a).project_id is None
    with session_scope(engine) as s, pytest.raises(ValueError, match="max_attempts"):
        jobs.create_job(s, "selftest", max_attempts=0)

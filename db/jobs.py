"""Repository functions of the ``jobs`` table: the one write path of every job row.

Kept beside ``db.repositories`` (same rules: the caller's session, never a commit) because the
jobs layer is generic machinery, not project history.

Every state change is ONE conditional UPDATE, so two processes can never both win:

* ``claim_job``: ``queued -> running`` only if still queued and not cancelled; a duplicate
  queue delivery, or a second worker, finds the row taken and does nothing;
* ``report_job`` / ``finish_job``: only while the row is ``running`` AND still owned by the
  caller's ``worker`` token, so a worker that was presumed dead (and whose job was requeued
  and claimed by another) learns it lost the job instead of overwriting the retry;
* ``abandon_job`` (the reaper): only if the row still carries the stale worker token and
  heartbeat it saw, so a heartbeat written meanwhile wins over the reaper.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import JOB_ACTIVE_STATUSES, Job, JobStatus, ModelVersion, RunStatus, utcnow


def _update(session: Session, job_id: int, *where: Any, **values: Any) -> bool:
    """One UPDATE of one job row guarded by ``where``; True if it matched."""
    result = session.execute(
        update(Job).where(Job.id == job_id, *where).values(**values)
        .execution_options(synchronize_session=False)
    )
    obj = session.identity_map.get(session.identity_key(Job, job_id))
    if obj is not None:
        session.expire(obj)
    return result.rowcount > 0


def create_job(session: Session, kind: str, payload: Mapping[str, Any] | None = None, *,
               project_id: int | None = None, max_attempts: int = 2) -> Job:
    """A queued job (flushed: its id is known)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    job = Job(kind=kind, project_id=project_id, payload=dict(payload or {}),
              max_attempts=max_attempts, status=JobStatus.QUEUED.value)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def list_jobs(session: Session, *, project_id: int | None = None,
              kinds: Iterable[str] | None = None, statuses: Iterable[str] | None = None,
              limit: int | None = 100) -> list[Job]:
    """Newest first."""
    stmt = select(Job)
    if project_id is not None:
        stmt = stmt.where(Job.project_id == project_id)
    if kinds is not None:
        stmt = stmt.where(Job.kind.in_(list(kinds)))
    if statuses is not None:
        stmt = stmt.where(Job.status.in_(list(statuses)))
    stmt = stmt.order_by(Job.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def claim_job(session: Session, job_id: int, worker: str) -> bool:
    """``queued -> running`` for ``worker``; False if taken, cancelled or ended meanwhile."""
    now = utcnow()
    return _update(
        session, job_id, Job.status == JobStatus.QUEUED.value, Job.cancel_requested.is_(False),
        status=JobStatus.RUNNING.value, worker=worker, attempts=Job.attempts + 1,
        started_at=now, heartbeat_at=now, stage="starting", progress=0.0, error=None,
    )


def report_job(session: Session, job_id: int, worker: str, *, progress: float | None = None,
               stage: str | None = None) -> bool | None:
    """Heartbeat (and progress/stage when given) of a running job.

    Returns None when ``worker`` no longer owns the running job (stop at once, write nothing),
    else whether a cancel was requested.
    """
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = min(max(float(progress), 0.0), 1.0)
    if stage is not None:
        values["stage"] = stage
    owned = (Job.status == JobStatus.RUNNING.value, Job.worker == worker)
    if not _update(session, job_id, *owned, **values):
        return None
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish_job(session: Session, job_id: int, worker: str, status: str, *,
               result: Mapping[str, Any] | None = None, error: str | None = None,
               project_id: int | None = None) -> bool:
    """Close a job this worker owns as done/failed/cancelled; False if it no longer owns it.

    ``project_id``: the project the job created (an import of a new project), so the job is
    listed with it afterwards.
    """
    if status in JOB_ACTIVE_STATUSES:
        raise ValueError(f"finish needs a final status, got {status!r}")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error,
                              "heartbeat_at": utcnow()}
    if project_id is not None:
        values["project_id"] = project_id
    if status == JobStatus.DONE.value:
        values["progress"] = 1.0
    if result is not None:
        values["result"] = dict(result)
    return _update(session, job_id, Job.status == JobStatus.RUNNING.value,
                   Job.worker == worker, **values)


def request_cancel(session: Session, job_id: int) -> str | None:
    """Cancel a job: a queued one ends now, a running one is flagged for its worker.

    Returns the status the job has afterwards (``cancelled`` or ``running``), or None when it
    had already ended (or does not exist).
    """
    if _update(session, job_id, Job.status == JobStatus.QUEUED.value,
               status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=utcnow(),
               error="cancelled before it started"):
        return JobStatus.CANCELLED.value
    if _update(session, job_id, Job.status == JobStatus.RUNNING.value, cancel_requested=True):
        return JobStatus.RUNNING.value
    return None


def stale_jobs(session: Session, silent_since: datetime) -> list[Job]:
    """Running jobs whose last heartbeat (or start) is older than ``silent_since``."""
    last = or_(Job.heartbeat_at < silent_since,
               Job.heartbeat_at.is_(None) & (Job.started_at < silent_since))
    stmt = select(Job).where(Job.status == JobStatus.RUNNING.value, last).order_by(Job.id)
    return list(session.scalars(stmt))


def abandon_job(session: Session, job: Job, error: str, *, requeue: bool) -> bool:
    """The reaper's step for a stale job: back to ``queued`` (a retry) or ``failed``.

    Guarded by the worker token AND the heartbeat the reaper saw: if the worker wrote a
    heartbeat in between, it is alive and keeps its job.
    """
    guard = (Job.status == JobStatus.RUNNING.value, Job.worker == job.worker,
             Job.heartbeat_at == job.heartbeat_at if job.heartbeat_at is not None
             else Job.heartbeat_at.is_(None))
    if requeue:
        values: dict[str, Any] = {"status": JobStatus.QUEUED.value, "worker": None,
                                  "stage": "waiting for a worker (retry)", "error": error}
    else:
        values = {"status": JobStatus.FAILED.value, "finished_at": utcnow(), "error": error}
    return _update(session, job.id, *guard, **values)


def fail_queued_job(session: Session, job_id: int, error: str) -> bool:
    """A queued job that can never run (e.g. the queue refused it): failed with ``error``."""
    return _update(session, job_id, Job.status == JobStatus.QUEUED.value,
                   status=JobStatus.FAILED.value, finished_at=utcnow(), error=error)


# ------------------------------------------------------- keeping model_versions in step


def requeue_model_version(session: Session, model_version_id: int) -> bool:
    """``running -> queued`` for a training whose worker died and whose job is retried.

    Only the jobs layer calls this (the reaper's retry): a model version row describes the
    model, and a retry of the same job trains the same model version again.
    """
    result = session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == model_version_id,
               ModelVersion.status == RunStatus.RUNNING.value)
        .values(status=RunStatus.QUEUED.value, stage="waiting for a worker (retry)",
                progress=0.0, started_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount > 0

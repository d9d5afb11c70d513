"""Jobs for pages and the CLI: submit, run inline, cancel, read, reap.

Every long action (train, import, score a batch, update a bank) is a row in ``jobs``:

* pages ``submit`` it (the queue carries it to a worker) and poll ``get_job``;
* the CLI runs it inline (``submit_inline``): the same handler, progress, Cancel and heartbeat
  path in its own process, or ``--background`` to submit it like a page;
* ``reap_stale`` turns jobs whose worker stopped (no heartbeat for ``KENSA_JOB_TIMEOUT_S``,
  default 90 s) into a retry (attempts left) or a visible failure. It runs when a worker
  starts, every few seconds inside workers, and whenever job status is read here, so a dead
  worker is noticed even when no worker is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from datetime import timedelta
from typing import Any

import db.jobs as jobs_repo
from db.models import JOB_ACTIVE_STATUSES, Job, JobStatus, utcnow
from services.context import Kensa
from services.jobs import registry
from services.jobs.local import ensure_local_worker
from services.jobs.queue import get_queue
from services.jobs.runner import (
    EchoFn,
    JobCancelled,
    JobFailed,
    execute,
    plain_message,
    worker_token,
)

log = logging.getLogger("kensa.jobs")

TIMEOUT_ENV = "KENSA_JOB_TIMEOUT_S"
#: ``1``: ``submit`` runs the job before returning (page tests without worker processes; like
#: huey's immediate mode). Never in production: a page would block on the work.
INLINE_ENV = "KENSA_JOBS_INLINE"
DEFAULT_TIMEOUT_S = 90.0

__all__ = [
    "JobCancelled", "JobFailed", "cancel", "get_job", "job_dict", "list_jobs", "reap_stale",
    "run_inline", "submit", "submit_inline", "wait",
]


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a running job's worker counts as dead."""
    return max(1.0, float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))


def job_dict(job: Job) -> dict[str, Any]:
    now = utcnow()
    last = job.heartbeat_at or job.started_at
    return {
        "id": job.id, "kind": job.kind, "title": _title(job.kind),
        "project_id": job.project_id, "status": job.status, "stage": job.stage,
        "progress": job.progress, "error": job.error, "payload": job.payload,
        "result": job.result, "attempts": job.attempts, "max_attempts": job.max_attempts,
        "worker": job.worker, "cancel_requested": job.cancel_requested,
        "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "heartbeat_at": job.heartbeat_at,
        # seconds since the worker's last sign of life (running jobs only)
        "silent_s": ((now - last).total_seconds()
                     if job.status == JobStatus.RUNNING.value and last else 0.0),
        "waiting_s": ((now - job.created_at).total_seconds()
                      if job.status == JobStatus.QUEUED.value and job.created_at else 0.0),
    }


def _title(kind: str) -> str:
    try:
        return registry.get_kind(kind).title
    except LookupError:
        return kind


def _create(ctx: Kensa, kind: str, payload: dict[str, Any], project_id: int | None,
            max_attempts: int) -> int:
    import db.repositories as repo

    registry.get_kind(kind)  # an unknown kind is refused before any row exists
    with ctx.session() as s:
        if project_id is None and isinstance(payload.get("name"), str):
            # payload "name" is the project's name by convention (import, score, bank update)
            project = repo.get_project_by_name(s, payload["name"])
            project_id = project.id if project is not None else None
        return jobs_repo.create_job(s, kind, payload, project_id=project_id,
                                    max_attempts=max_attempts).id


def submit(ctx: Kensa, kind: str, payload: dict[str, Any], *, project_id: int | None = None,
           max_attempts: int | None = None) -> int:
    """Queue a job for a worker; returns its id at once.

    On one machine (no ``KENSA_QUEUE_URL``) this also starts the local worker if none runs.
    A queue that refuses the message (Redis down) fails the job visibly and raises.
    """
    attempts = max_attempts or registry.get_kind(kind).max_attempts
    job_id = _create(ctx, kind, payload, project_id, attempts)
    if os.environ.get(INLINE_ENV, "").strip() == "1":  # tests of pages: no worker process
        with contextlib.suppress(JobCancelled, JobFailed):  # the row says how it ended
            run_inline(ctx, job_id)
        return job_id
    try:
        get_queue(ctx.home).push(job_id)
    except Exception as exc:  # noqa: BLE001 - the row must not wait for ever
        message = f"the job queue is not reachable ({plain_message(exc)})"
        with ctx.session() as s:
            jobs_repo.fail_queued_job(s, job_id, message)
        raise RuntimeError(message) from exc
    ensure_local_worker(ctx)
    return job_id


def run_inline(ctx: Kensa, job_id: int, echo: EchoFn | None = None) -> dict[str, Any]:
    """Run a queued job in this process; returns the handler's full result.

    Raises :class:`JobCancelled` or :class:`JobFailed` (a RuntimeError) with the row's plain
    message when it did not end as done.
    """
    outcome = execute(ctx, job_id, worker_token("cli"), echo)
    if outcome is None:
        raise RuntimeError(f"job {job_id} is not queued (taken by a worker, or ended)")
    if outcome.status == JobStatus.CANCELLED.value:
        raise JobCancelled(f"job {job_id} {outcome.error or 'cancelled'}")
    if outcome.status != JobStatus.DONE.value:
        raise JobFailed(outcome.error or f"job {job_id} {outcome.status}")
    assert outcome.result is not None
    return outcome.result


def submit_inline(ctx: Kensa, kind: str, payload: dict[str, Any], *,
                  project_id: int | None = None, echo: EchoFn | None = None
                  ) -> tuple[int, dict[str, Any]]:
    """Create a job and run it here (the CLI); ``(job id, full result)``.

    One attempt: if this process dies, the reaper marks the job failed rather than retrying
    it somewhere the person at the terminal does not expect.
    """
    job_id = _create(ctx, kind, payload, project_id, max_attempts=1)
    return job_id, run_inline(ctx, job_id, echo)


def cancel(ctx: Kensa, job_id: int) -> str | None:
    """Cancel a job: a queued one ends at once, a running one stops at its next report.

    Returns ``cancelled`` (ended now), ``running`` (asked to stop), or None (already ended).
    """
    with ctx.session() as s:
        job = jobs_repo.get_job(s, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        state = jobs_repo.request_cancel(s, job_id)
        if state is not None:
            hook = registry.get_kind(job.kind).on_cancel
            if hook is not None:
                hook(s, job)
        return state


def reap_stale(ctx: Kensa, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Requeue (attempts left) or fail the running jobs whose heartbeat stopped.

    Returns ``[{"id", "action": "requeued"|"failed", "error"}]``. Safe to run anywhere and
    often: each step is one conditional UPDATE that loses to a heartbeat written meanwhile.
    """
    timeout = heartbeat_timeout() if timeout_s is None else timeout_s
    now = utcnow()
    acted: list[dict[str, Any]] = []
    with ctx.session() as s:
        for job in jobs_repo.stale_jobs(s, now - timedelta(seconds=timeout)):
            silent = (now - (job.heartbeat_at or job.started_at or now)).total_seconds()
            requeue = job.attempts < job.max_attempts and not job.cancel_requested
            message = (f"the worker stopped ({job.worker}; no heartbeat for {silent:.0f} s): "
                       "it was killed, ran out of memory or lost its machine")
            message += "; retrying on another worker" if requeue else ""
            if not jobs_repo.abandon_job(s, job, message, requeue=requeue):
                continue
            hook = _abandon_hook(job.kind)
            if hook is not None:
                hook(s, job, requeue, message)
            acted.append({"id": job.id, "action": "requeued" if requeue else "failed",
                          "error": message})
    for item in acted:
        log.warning("job %s %s: %s", item["id"], item["action"], item["error"])
        if item["action"] == "requeued":
            try:
                get_queue(ctx.home).push(item["id"])
            except Exception as exc:  # noqa: BLE001 - queued without a message: never runs
                with ctx.session() as s:
                    jobs_repo.fail_queued_job(s, item["id"], f"{item['error']}; the queue is "
                                              f"not reachable ({plain_message(exc)})")
    if acted:
        ensure_local_worker(ctx)
    return acted


def _abandon_hook(kind: str) -> Any:
    try:
        return registry.get_kind(kind).on_abandon
    except LookupError:
        return None


def get_job(ctx: Kensa, job_id: int, *, reap: bool = True) -> dict[str, Any]:
    """One job as a dict (pages poll this); stale jobs are reaped first."""
    if reap:
        reap_stale(ctx)
    with ctx.session(readonly=True) as s:
        job = jobs_repo.get_job(s, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        return job_dict(job)


def list_jobs(ctx: Kensa, project: str | None = None, *, kinds: list[str] | None = None,
              active: bool = False, limit: int | None = 50, reap: bool = True
              ) -> list[dict[str, Any]]:
    """Jobs newest first, optionally of one project, of some kinds, or still active."""
    from services.data.projects import require_project

    if reap:
        reap_stale(ctx)
    with ctx.session(readonly=True) as s:
        project_id = require_project(s, project).id if project else None
        rows = jobs_repo.list_jobs(s, project_id=project_id, kinds=kinds, limit=limit,
                                   statuses=JOB_ACTIVE_STATUSES if active else None)
        return [job_dict(j) for j in rows]


def wait(ctx: Kensa, job_id: int, timeout_s: float = 600.0, poll_s: float = 0.2
         ) -> dict[str, Any]:
    """Block until the job ends (tests, scripts); raises TimeoutError naming its state."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(ctx, job_id)
        if job["status"] not in JOB_ACTIVE_STATUSES:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s "
                               f"({job['stage'] or 'no stage yet'})")
        time.sleep(poll_s)

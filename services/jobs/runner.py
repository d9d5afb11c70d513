"""Running one job: claim the row, keep its heartbeat, run the handler, close the row.

The same path runs a job in a queue worker (``handle_message``) and inline in the CLI
(``services.jobs.api.run_inline``), so progress, Cancel, heartbeat and error texts behave the
same everywhere.

* Claim: a conditional ``queued -> running`` UPDATE (``db.jobs.claim_job``). A second delivery
  of the same message, or a message for a cancelled job, finds nothing to claim and returns.
* Heartbeat: a daemon thread writes ``heartbeat_at`` every ``KENSA_JOB_HEARTBEAT_S`` seconds
  (default 5) while the handler runs, whatever the handler is doing, so a silent but busy
  step is never mistaken for a dead worker; the reaper (``api.reap_stale``) only acts on
  heartbeats older than ``KENSA_JOB_TIMEOUT_S`` (default 90).
* Cancel: every progress report (written at most every 0.5 s) and every heartbeat read
  ``cancel_requested``; the next report then raises :class:`JobCancelled`, so a handler that
  reports often stops within about a second.
* Errors: the row gets a plain one-line message (no exception class names: pages show it as
  it is); the traceback goes to the worker's log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import db.jobs as jobs_repo
import db.repositories as repo
from db.models import JobStatus
from services.context import Kensa
from services.jobs import registry

log = logging.getLogger("kensa.jobs")

HEARTBEAT_ENV = "KENSA_JOB_HEARTBEAT_S"
#: Progress is written at most this often (a report with a new stage is written at once).
PROGRESS_INTERVAL_S = 0.5

EchoFn = Callable[[str, float], None]


class JobCancelled(RuntimeError):
    """The job was cancelled (by a user, or Ctrl-C in the CLI); the message says so."""


class JobLost(Exception):
    """This worker no longer owns the job (presumed dead and the job was requeued)."""


class JobFailed(RuntimeError):
    """An inline job ended as failed; the message is the row's ``error``."""


def heartbeat_interval() -> float:
    return max(0.05, float(os.environ.get(HEARTBEAT_ENV) or 5.0))


def worker_token(role: str = "worker") -> str:
    """``host:pid:role-xxxx``: who runs a job (shown to operators) and a unique claim token."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}-{uuid.uuid4().hex[:6]}"


def plain_message(exc: BaseException) -> str:
    """One line a quality engineer can read; never the exception's class name.

    An ``OSError`` from the system (disk full, permission denied) reads ``[Errno 28] No space
    left on device: '/x'`` as text; it becomes ``/x: No space left on device``.
    """
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, ValueError | LookupError | OSError | RuntimeError | JobCancelled):
        return text or "the job stopped without saying why; see the worker log"
    return (f"internal error: {text} (see the worker log)" if text
            else "internal error (see the worker log)")


def json_safe(value: Any) -> Any:
    """What a JSON column can hold: timestamps as ISO text, paths and the rest as text."""
    def default(v: object) -> str:
        return v.isoformat() if isinstance(v, datetime) else str(v)

    return json.loads(json.dumps(value, default=default))


@dataclass(frozen=True)
class JobInfo:
    """What a handler gets to know about its job (a snapshot, not a live row)."""

    id: int
    kind: str
    project_id: int | None
    payload: dict[str, Any]
    attempts: int


@dataclass
class Outcome:
    job_id: int
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None


class Reporter:
    """``report(stage, fraction)`` for handlers, plus the heartbeat thread of one job."""

    def __init__(self, ctx: Kensa, job_id: int, worker: str, echo: EchoFn | None = None) -> None:
        self.ctx, self.job_id, self.worker, self.echo = ctx, job_id, worker, echo
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._stage: str | None = None
        self._written = 0.0
        self._thread: threading.Thread | None = None

    # -- handler side -----------------------------------------------------------------
    def __call__(self, stage: str, fraction: float) -> None:
        """Progress; raises JobCancelled / JobLost when the job must stop."""
        self.quiet(stage, fraction)
        self.check()

    def quiet(self, stage: str, fraction: float) -> None:
        """Progress without raising: for code that has its own cancel path (training)."""
        if self.echo:
            self.echo(stage, fraction)
        now = time.monotonic()
        if stage == self._stage and now - self._written < PROGRESS_INTERVAL_S:
            return
        self._stage, self._written = stage, now
        self._write(progress=fraction, stage=stage)

    def cancelled(self) -> bool:
        return self._cancel.is_set() or self._lost.is_set()

    def check(self) -> None:
        if self._lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over after a missed heartbeat")
        if self._cancel.is_set():
            raise JobCancelled("cancelled" + (f" while {self._stage}" if self._stage else ""))

    # -- heartbeat --------------------------------------------------------------------
    def _write(self, **values: Any) -> None:
        with self.ctx.session() as s:
            flag = jobs_repo.report_job(s, self.job_id, self.worker, **values)
        if flag is None:
            self._lost.set()
        elif flag:
            self._cancel.set()

    def _beat(self) -> None:
        interval = heartbeat_interval()
        while not self._stop.wait(interval):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the job
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.job_id}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def cancel_requested_now(self) -> bool:
        """Read the flag from the row (after a handler failed: was it a Cancel?)."""
        with self.ctx.session(readonly=True) as s:
            job = jobs_repo.get_job(s, self.job_id)
            return bool(job is not None and job.cancel_requested)


def execute(ctx: Kensa, job_id: int, worker: str, echo: EchoFn | None = None
            ) -> Outcome | None:
    """Claim and run job ``job_id``; None when it was not ours to run (taken, ended, gone).

    ``Outcome.result`` is the handler's full result (the row stores ``kind.store(result)``).
    KeyboardInterrupt/SystemExit end the job as cancelled and are raised again.
    """
    with ctx.session() as s:
        if not jobs_repo.claim_job(s, job_id, worker):
            return None
        job = jobs_repo.get_job(s, job_id)
        assert job is not None
        info = JobInfo(job.id, job.kind, job.project_id, dict(job.payload), job.attempts)
    reporter = Reporter(ctx, job_id, worker, echo)
    reporter.start()
    status, result, error, stored = JobStatus.DONE.value, None, None, None
    interrupted: BaseException | None = None
    try:
        kind = registry.get_kind(info.kind)
        result = kind.handler(ctx, info, reporter)  # finished work stays done
    except JobLost:
        log.warning("job %s: lost ownership (presumed dead); nothing written", job_id)
        reporter.stop()
        return Outcome(job_id, "lost")
    except JobCancelled as exc:
        status, error = JobStatus.CANCELLED.value, plain_message(exc)
    except Exception as exc:  # noqa: BLE001 - every failure ends as a visible row
        if reporter.cancel_requested_now():
            status, error = JobStatus.CANCELLED.value, "cancelled"
        else:
            log.exception("job %s (%s) failed", job_id, info.kind)
            status, error = JobStatus.FAILED.value, plain_message(exc)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: never leave it "running"
        status, error, interrupted = JobStatus.CANCELLED.value, "interrupted", exc
    finally:
        reporter.stop()
    if status == JobStatus.DONE.value and result is not None:
        stored = json_safe(registry.get_kind(info.kind).store(result))
    with ctx.session() as s:
        project_id = None
        if info.project_id is None and isinstance(info.payload.get("name"), str):
            project = repo.get_project_by_name(s, info.payload["name"])  # e.g. a new import
            project_id = project.id if project is not None else None
        owned = jobs_repo.finish_job(s, job_id, worker, status, result=stored, error=error,
                                     project_id=project_id)
    if not owned:
        log.warning("job %s: ended as %s but no longer owned; not recorded", job_id, status)
    if interrupted is not None:
        raise interrupted
    return Outcome(job_id, status, result, error)


# --------------------------------------------------------------------------- worker process


class _Activity:
    """Jobs running in this process and when the last one ended (for the idle exit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.last_end = time.monotonic()

    def __enter__(self) -> None:
        with self.lock:
            self.running += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.running -= 1
            self.last_end = time.monotonic()

    def idle_for(self) -> float:
        with self.lock:
            return 0.0 if self.running else time.monotonic() - self.last_end


ACTIVITY = _Activity()
_CTX: Kensa | None = None
_CTX_LOCK = threading.Lock()


def process_context() -> Kensa:
    """The worker process's context, from ``KENSA_HOME`` / ``DATABASE_URL`` (built once)."""
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            _CTX = Kensa.create()
        return _CTX


def handle_message(job_id: int) -> None:
    """A queue message: run the job if it is still ours to run (huey task body)."""
    ctx = process_context()
    with ACTIVITY:
        outcome = execute(ctx, job_id, worker_token())
    if outcome is None:
        log.info("job %s: already taken, cancelled or gone; message ignored", job_id)
    else:
        log.info("job %s: %s%s", job_id, outcome.status,
                 f" ({outcome.error})" if outcome.error else "")

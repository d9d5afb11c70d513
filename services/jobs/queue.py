"""The queue that carries "run job ID" messages to workers: huey, chosen by the environment.

* no ``KENSA_QUEUE_URL`` (one machine, the default): ``SqliteHuey`` with its file at
  ``$KENSA_HOME/jobs/queue.db``; no service to install or start;
* ``KENSA_QUEUE_URL=redis://host:6379/0``: ``RedisHuey``; workers on other machines that
  point at the same Redis (and the same database and ``KENSA_HOME``) share one queue.

Why huey: small and well kept, one dependency-free package whose SQLite storage needs no
service at all, and the same task code runs on Redis when a plant scales out. Celery, RQ and
Dramatiq all need a broker (Redis or RabbitMQ) even on a single machine.

The queue only transports job ids: the ``jobs`` table is the record of status, progress and
result (huey's result store is switched off). A message delivered twice, or left over after a
job was cancelled, finds the row already taken or ended and does nothing (``runner``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey

QUEUE_ENV = "KENSA_QUEUE_URL"
QUEUE_NAME_ENV = "KENSA_QUEUE_NAME"
#: The one huey task; its name is what travels in messages, so it must never change.
TASK_NAME = "kensa.run_job"


def queue_url() -> str | None:
    """``KENSA_QUEUE_URL`` (a ``redis://`` URL) or None for the local SQLite queue."""
    return (os.environ.get(QUEUE_ENV) or "").strip() or None


def queue_file(home: Path) -> Path:
    return Path(home) / "jobs" / "queue.db"


@dataclass(frozen=True)
class JobQueue:
    """A huey instance with Kensa's single task registered on it."""

    huey: Huey
    task: Any  # huey.api.TaskWrapper
    url: str | None

    def push(self, job_id: int) -> None:
        """Enqueue "run job ``job_id``" (returns at once)."""
        self.task(int(job_id))

    def pending(self) -> int:
        """Messages waiting in the queue (not counting those being worked on)."""
        return int(self.huey.pending_count())

    @property
    def shared(self) -> bool:
        """Whether workers on other machines can take from this queue."""
        return self.url is not None


def _run_job_message(job_id: int) -> None:
    """What a consumer does with a message: run the job (see ``services.jobs.runner``)."""
    from services.jobs.runner import handle_message

    handle_message(int(job_id))


@functools.cache
def _make_queue(home: str, url: str | None, name: str) -> JobQueue:
    huey: Huey
    if url is not None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{QUEUE_ENV} must be a redis:// URL, got {url!r}")
        huey = RedisHuey(name, url=url, results=False)
    else:
        path = queue_file(Path(home))
        path.parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey(name, filename=str(path), results=False)
    # retries=0: a worker that dies is noticed by the jobs table's heartbeat, and the reaper
    # decides about a retry there (huey cannot tell a crash from a long job).
    task = huey.task(retries=0, name=TASK_NAME)(_run_job_message)
    return JobQueue(huey, task, url)


def get_queue(home: Path, url: str | None = None) -> JobQueue:
    """The queue of the installation at ``home`` (default URL: the environment's)."""
    url = url if url is not None else queue_url()
    name = (os.environ.get(QUEUE_NAME_ENV) or "kensa").strip() or "kensa"
    return _make_queue(str(Path(home).resolve()), url, name)

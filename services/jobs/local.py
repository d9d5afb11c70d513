"""The local worker of a one-machine install: started on demand, exactly one at a time.

Without ``KENSA_QUEUE_URL`` nobody else will take jobs from the SQLite queue, so submitting a
job makes sure a consumer runs (``python -m services.jobs.worker --local``, detached, log in
``$KENSA_HOME/jobs/worker.log``). Exactly one: the consumer holds an exclusive ``flock`` on
``$KENSA_HOME/jobs/worker.lock`` for its whole life and exits at once if another holds it,
so two submitters racing to start one cannot end up with two. It exits after a while with
nothing to do (``--idle-exit``) and the next submission starts it again.

``KENSA_LOCAL_WORKER``: ``auto`` (default: start one only when there is no queue URL), ``1``
(also with a queue URL: this machine works too), ``0`` (never; tests, or a machine whose
workers are started by the operator).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from services.context import Kensa
from services.jobs.queue import queue_url

LOCAL_WORKER_ENV = "KENSA_LOCAL_WORKER"
#: How long a worker started on demand waits for work before it exits.
LOCAL_IDLE_EXIT_S = 600
#: After starting a worker, wait this long for it to take the lock before starting another.
STARTING_S = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def lock_path(home: Path) -> Path:
    return Path(home) / "jobs" / "worker.lock"


def take_lock(home: Path) -> IO[str] | None:
    """The local-worker lock, held until the returned file is closed; None if taken."""
    path = lock_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held for the life of the worker
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def local_worker_running(home: Path) -> bool:
    handle = take_lock(home)
    if handle is None:
        return True
    handle.close()
    return False


def wants_local_worker() -> bool:
    mode = (os.environ.get(LOCAL_WORKER_ENV) or "auto").strip().lower()
    if mode in ("0", "false", "no", "off"):
        return False
    if mode in ("1", "true", "yes", "on"):
        return True
    return queue_url() is None


def ensure_local_worker(ctx: Kensa) -> bool:
    """Start the local worker if this machine should have one and none runs; True if started.

    Cheap when one runs (one failed non-blocking ``flock``): pages may call it on every poll.
    """
    if not wants_local_worker() or local_worker_running(ctx.home):
        return False
    # A worker takes the lock within a second of starting; don't start a crowd meanwhile.
    starting = ctx.home / "jobs" / "worker.starting"
    try:
        if time.time() - starting.stat().st_mtime < STARTING_S:
            return False
    except FileNotFoundError:
        pass
    starting.parent.mkdir(parents=True, exist_ok=True)
    starting.touch()
    log = ctx.home / "jobs" / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = ctx.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log, "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "services.jobs.worker", "--local",
             "--idle-exit", str(LOCAL_IDLE_EXIT_S)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,  # outlives a page rerun
        )
    return True

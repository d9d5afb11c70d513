"""A job worker: a huey consumer that runs Kensa's jobs from the queue.

    python -m services.jobs.worker [--workers N] [--idle-exit SECONDS] [--local]

It reads ``KENSA_HOME``, ``DATABASE_URL`` and ``KENSA_QUEUE_URL`` from the environment: on a
plant, start one per GPU/CPU machine with the same three values (``KENSA_HOME`` on a shared
file system) and they all take jobs from one Redis queue. Without ``KENSA_QUEUE_URL`` it
works the local SQLite queue; the app starts one on demand (``--local``: at most one per
``KENSA_HOME``, see ``services.jobs.local``).

Alongside the consumer a maintenance thread reaps jobs whose worker died (no heartbeat for
``KENSA_JOB_TIMEOUT_S``) every few seconds, and, with ``--idle-exit``, stops the worker once
it has had nothing to do for that long.

This is the only module that sets process-wide settings (torch threads, logging): jobs also
run inline in the CLI, where those belong to the caller.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from db.session import kensa_home
from services.jobs.api import heartbeat_timeout, reap_stale
from services.jobs.local import take_lock
from services.jobs.queue import get_queue
from services.jobs.runner import ACTIVITY, process_context

log = logging.getLogger("kensa.worker")


def _maintain(stop: threading.Event, every_s: float, idle_exit_s: float) -> None:
    ctx = process_context()
    queue = get_queue(ctx.home)
    while not stop.wait(every_s):
        try:
            reap_stale(ctx)
            if idle_exit_s and ACTIVITY.idle_for() > idle_exit_s and queue.pending() == 0:
                log.info("idle for %.0f s; exiting (the next job starts a worker again)",
                         ACTIVITY.idle_for())
                os.kill(os.getpid(), signal.SIGINT)  # huey's graceful stop
                return
        except Exception:  # noqa: BLE001 - maintenance must survive a database hiccup
            log.exception("maintenance step failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.jobs.worker",
                                     description="run Kensa jobs from the queue")
    parser.add_argument("--workers", type=int, default=1,
                        help="jobs run at once in this process (threads); default 1")
    parser.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                        help="exit after this long without work (0: never)")
    parser.add_argument("--local", action="store_true",
                        help="the on-demand local worker: exit if one already runs here")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The lock first, before the slow imports: submitters racing during our start see it.
    lock = take_lock(kensa_home()) if args.local else None
    if args.local and lock is None:
        log.info("a local worker already runs for %s; exiting", kensa_home())
        return 0

    from engine.device import configure_worker_process, worker_threads  # imports torch

    # N job threads share this process's torch threads: split them instead of oversubscribing.
    threads = configure_worker_process(max(1, worker_threads() // args.workers))

    ctx = process_context()
    queue = get_queue(ctx.home)
    log.info("worker for %s, queue %s, %d job thread(s), %d torch thread(s)", ctx.home,
             "redis" if queue.shared else "sqlite (local)", args.workers, threads)
    reap_stale(ctx)
    stop = threading.Event()
    every = max(0.5, min(15.0, heartbeat_timeout() / 3))
    maintenance = threading.Thread(target=_maintain, args=(stop, every, args.idle_exit),
                                   name="maintenance", daemon=True)
    maintenance.start()
    consumer = queue.huey.create_consumer(
        workers=args.workers, worker_type="thread", periodic=False, initial_delay=0.1,
        max_delay=1.0, check_worker_health=True,
    )
    try:
        consumer.run()
    finally:
        stop.set()
        if lock is not None:
            lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

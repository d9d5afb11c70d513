"""Fixtures for job tests: no automatic local worker, and real worker processes on demand."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.context import Kensa
from services.jobs import queue as job_queue

ROOT = Path(__file__).resolve().parents[3]
REDIS_ENV = "KENSA_TEST_REDIS_URL"


@pytest.fixture(autouse=True)
def no_automatic_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start the workers they want; ``submit`` must not spawn one behind their back."""
    monkeypatch.setenv("KENSA_LOCAL_WORKER", "0")
    monkeypatch.delenv("KENSA_QUEUE_URL", raising=False)
    monkeypatch.setenv("KENSA_QUEUE_NAME", f"kensa-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """A Redis queue URL (``bash .ci/redis.sh``); required under ``KENSA_REQUIRE_REDIS``/CI."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        if os.environ.get("CI") or os.environ.get("KENSA_REQUIRE_REDIS"):
            pytest.fail(f"{REDIS_ENV} not set but Redis is required here")
        pytest.skip(f"{REDIS_ENV} not set (export {REDIS_ENV}=\"$(bash .ci/redis.sh)\")")
    monkeypatch.setenv("KENSA_QUEUE_URL", url)
    return url


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(ctx: Kensa, tmp_path: Path) -> Iterator[WorkerFactory]:
    """``start_worker(name)``: a ``python -m services.jobs.worker`` process on ctx's data.

    Heartbeats every 0.3 s and a 3 s timeout, so a killed worker is noticed quickly. All
    workers still alive at the end are killed (by their own pid).
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str = "w", *args: str) -> subprocess.Popen[bytes]:
        env = ctx.env()
        env.update(KENSA_JOB_HEARTBEAT_S="0.3", KENSA_JOB_TIMEOUT_S="3", OMP_NUM_THREADS="1",
                   KENSA_TORCH_THREADS="1", KENSA_LOCAL_WORKER="0",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                            env.get("PYTHONPATH")])))
        log = open(tmp_path / f"worker-{name}.log", "ab")  # noqa: SIM115 - closed with proc
        proc = subprocess.Popen([sys.executable, "-m", "services.jobs.worker", *args],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                     for p in sorted(tmp_path.glob("worker-*.log")))


@pytest.fixture
def clear_queue_cache() -> Iterator[None]:
    yield
    job_queue._make_queue.cache_clear()

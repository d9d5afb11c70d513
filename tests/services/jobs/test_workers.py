"""Real worker processes: Cancel stops a training within seconds, a SIGKILLed worker's job is
retried by the other worker, and two workers on one Redis queue run every job exactly once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from services.context import Kensa
from services.jobs import api
from services.jobs.registry import selftest_markers
from services.training.project import get_model_version, request_training, start_training_job
from tests.services.conftest import SHOTS
from tests.services.jobs.conftest import WorkerFactory, worker_logs

pytestmark = pytest.mark.usefixtures("clear_queue_cache")


def _wait_for(ctx: Kensa, job_id: int, status: str, tmp_path: Path, timeout: float = 120,
              stage: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get_job(ctx, job_id, reap=False)
        if job["status"] == status and (stage is None or job["stage"] == stage):
            return job
        assert job["status"] in ("queued", "running", status), (job, worker_logs(tmp_path))
        assert time.monotonic() < deadline, (job, worker_logs(tmp_path))
        time.sleep(0.05)


def _pid(job: dict) -> int:
    return int(job["worker"].split(":")[1])


def test_cancel_stops_a_training_worker_within_seconds(
    ctx: Kensa, project: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    # 384 px and 8 views per shot: feature extraction alone takes several seconds here
    mv_id = request_training(ctx, project, SHOTS, 0, {"image_size": 384})
    job_id = start_training_job(ctx, mv_id)
    worker = start_worker("train")
    _wait_for(ctx, job_id, "running", tmp_path, stage="extracting features")
    cancelled_at = time.monotonic()
    assert api.cancel(ctx, job_id) == "running"
    job = _wait_for(ctx, job_id, "cancelled", tmp_path, timeout=30)
    assert time.monotonic() - cancelled_at < 5, job
    assert get_model_version(ctx, mv_id)["status"] == "cancelled"
    assert worker.poll() is None  # the worker lives on and takes the next job
    follow_up = api.submit(ctx, "selftest", {"seconds": 0.1})
    _wait_for(ctx, follow_up, "done", tmp_path)


def test_a_killed_workers_job_is_retried_by_another(
    ctx: Kensa, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    first, second = start_worker("a"), start_worker("b")
    job_id = api.submit(ctx, "selftest", {"seconds": 4})
    job = _wait_for(ctx, job_id, "running", tmp_path)
    victim = first if _pid(job) == first.pid else second
    survivor = second if victim is first else first
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    job = _wait_for(ctx, job_id, "done", tmp_path, timeout=90)
    assert job["attempts"] == 2 and _pid(job) == survivor.pid
    assert len(selftest_markers(ctx.home, job_id)) == 1  # the killed run never finished


def test_a_lone_killed_worker_is_reported_failed(ctx: Kensa, start_worker: WorkerFactory,
                                                 tmp_path: Path) -> None:
    worker = start_worker("only")
    job_id = api.submit(ctx, "selftest", {"seconds": 30}, max_attempts=1)
    _wait_for(ctx, job_id, "running", tmp_path)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    time.sleep(3.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KENSA_JOB_TIMEOUT_S", "3")
        job = api.get_job(ctx, job_id)  # the app reading status reaps: no worker is left
    assert job["status"] == "failed"
    assert job["error"].startswith("the worker stopped (") and "no heartbeat for" in job["error"]


def test_two_workers_share_one_redis_queue_exactly_once(
    ctx: Kensa, redis_url: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    workers: list[subprocess.Popen[bytes]] = [start_worker("r1"), start_worker("r2")]
    long_id = api.submit(ctx, "selftest", {"seconds": 5})
    short = [api.submit(ctx, "selftest", {"seconds": 0.2}) for _ in range(20)]
    job = _wait_for(ctx, long_id, "running", tmp_path)
    victim = next(w for w in workers if w.pid == _pid(job))
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    ids = [long_id, *short]
    finished = {i: _wait_for(ctx, i, "done", tmp_path, timeout=180) for i in ids}
    for i in ids:
        assert len(selftest_markers(ctx.home, i)) == 1, (i, finished[i])
    assert finished[long_id]["attempts"] == 2
    assert _pid(finished[long_id]) != victim.pid
    assert all(finished[i]["attempts"] == 1 for i in short)
    assert len(list((ctx.home / "jobs" / "selftest").iterdir())) == len(ids)

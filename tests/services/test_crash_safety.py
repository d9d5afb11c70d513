"""SIGKILL a training or bank-update worker at random moments: history stays consistent.

Ten kills, alternating training and bank-update jobs, each run by a fresh job worker process
(``python -m services.jobs.worker``), at seeded random delays spread over the measured
duration of one full worker run (start-up included: a user's kill can land there too; the two
kinds take about as long, both dominated by importing torch). Afterwards
every bank version row points at a complete file whose sha256 verifies, every bank version
has exactly one active threshold, killed trainings left no rows behind, and the bank that was
active before the kills still scores an image.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import db.repositories as repo
from db.models import RunStatus
from engine.data import load_image
from engine.models import registry
from services.context import Kensa
from services.data.projects import create_project
from services.history.versions import start_bank_update_job
from services.inference.batches import get_active_model, load_model, validation_batch_name
from services.jobs import api
from services.training.project import request_training, start_training_job, train_project
from tests.services.conftest import PARAMS, SHOTS

KILLS = 10


ROOT = Path(__file__).resolve().parents[2]


def _worker(ctx: Kensa, log: Path) -> subprocess.Popen[bytes]:
    """A job worker in its own session (so the kill takes its whole process group)."""
    env = {**ctx.env(), "KENSA_LOCAL_WORKER": "0", "OMP_NUM_THREADS": "1",
           "KENSA_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.jobs.worker"], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _run_to_end(ctx: Kensa, job_id: int, log: Path) -> float:
    started = time.monotonic()
    proc = _worker(ctx, log)
    try:
        assert api.wait(ctx, job_id, timeout_s=180)["status"] == "done", log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return time.monotonic() - started


def test_sigkill_at_random_points_leaves_only_complete_banks(
    tmp_path: Path, dataset: Path, new_goods: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KENSA_LOCAL_WORKER", "0")  # only the workers this test starts and kills
    ctx = Kensa.create(tmp_path / "home")
    create_project(ctx, "w", dataset)
    train_project(ctx, "w", SHOTS, 0, PARAMS)  # bank v1, in-process: quick

    def train() -> int:
        return start_training_job(ctx, request_training(ctx, "w", SHOTS, 0, PARAMS))

    seeds = iter(range(1, 100))

    def update() -> int:
        return start_bank_update_job(ctx, "w", [new_goods(2, seed=next(seeds))])

    log = tmp_path / "worker.log"
    duration = _run_to_end(ctx, update(), log)  # bank v2 by a worker, timed
    before = get_active_model(ctx, "w")
    assert before.bank_version == 2
    probe = load_image(dataset / "test" / "spot" / "spot_000.png")
    score_before = float(load_model(before).model.score([probe]).scores[0])

    rng = random.Random(20261125)
    killed = 0
    for i in range(KILLS):
        job_id = train() if i % 2 == 0 else update()
        proc = _worker(ctx, log)
        time.sleep(rng.uniform(0.0, duration))
        unfinished = api.get_job(ctx, job_id, reap=False)["status"] != "done"
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group
        proc.wait(timeout=60)
        killed += unfinished
        api.cancel(ctx, job_id)  # a job killed before its claim must not run in the next one
    assert killed >= KILLS // 2  # most kills landed mid-run, not after the job ended

    with ctx.session(readonly=True) as s:
        for mv in repo.list_model_versions(s, 1):
            banks = repo.list_state_versions(s, mv.id)
            if mv.status != RunStatus.DONE.value:  # killed: nothing of it is visible
                assert banks == []
                assert repo.get_batch_by_name(s, 1, validation_batch_name(mv.id)) is None
                continue
            assert [b.version for b in banks] == list(range(1, len(banks) + 1))
            assert sum(b.is_active for b in banks) == 1
            for bank in banks:  # every file of every version verified while loading
                loaded = registry.load(bank.state_format, ctx.resolve(bank.directory),
                                       files=bank.files)
                assert (loaded.vector_count, loaded.dim) == (bank.vector_count, bank.dim)
                thresholds = repo.list_thresholds(s, bank.id)
                assert sum(t.active for t in thresholds) == 1, bank.version

    # the previously active version still scores, exactly as before
    model = registry.load(before.state_format, before.state_dir, files=before.files)
    assert float(model.score([probe]).scores[0]) == score_before
    # and whatever is active now is usable
    assert load_model(get_active_model(ctx, "w")).model.score([probe]).scores.shape == (1,)
    ctx.close()

"""SIGKILL a training or bank-update worker at random moments: history stays consistent.

Ten kills, alternating training and bank-update workers, at seeded random delays spread over
the measured duration of one full worker run (start-up included: a user's kill can land there
too; the two kinds take about as long, both dominated by importing torch). Afterwards
every bank version row points at a complete file whose sha256 verifies, every bank version
has exactly one active threshold, killed trainings left no rows behind, and the bank that was
active before the kills still scores an image.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import db.repositories as repo
from db.models import RunStatus
from engine.data import load_image
from engine.memory_bank import MemoryBank
from engine.models.fewshot import FewShotPatchCore
from services.context import Kensa
from services.data.projects import create_project
from services.history.versions import start_bank_update_process
from services.inference.batches import get_active_model, load_model, validation_batch_name
from services.training.project import request_training, start_training_process, train_project
from tests.services.conftest import PARAMS, SHOTS

KILLS = 10


def _run_to_end(proc: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    assert proc.wait(timeout=180) == 0
    return time.monotonic() - started


def test_sigkill_at_random_points_leaves_only_complete_banks(
    tmp_path: Path, dataset: Path, new_goods: Callable[..., Path]
) -> None:
    ctx = Kensa.create(tmp_path / "home")
    create_project(ctx, "w", dataset)
    train_project(ctx, "w", SHOTS, 0, PARAMS)  # bank v1, in-process: quick

    def train() -> subprocess.Popen[bytes]:
        return start_training_process(ctx, request_training(ctx, "w", SHOTS, 0, PARAMS))

    seeds = iter(range(1, 100))

    def update() -> subprocess.Popen[bytes]:
        return start_bank_update_process(ctx, "w", [new_goods(2, seed=next(seeds))])

    duration = _run_to_end(update())  # bank v2 by a worker, timed
    before = get_active_model(ctx, "w")
    assert before.bank_version == 2
    probe = load_image(dataset / "test" / "spot" / "spot_000.png")
    score_before = float(load_model(before).model.score([probe]).scores[0])

    rng = random.Random(20261125)
    killed = 0
    for i in range(KILLS):
        proc = train() if i % 2 == 0 else update()
        time.sleep(rng.uniform(0.0, duration))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group
        killed += proc.wait(timeout=60) == -signal.SIGKILL
    assert killed >= KILLS // 2  # most kills landed mid-run, not after the worker ended

    with ctx.session(readonly=True) as s:
        for mv in repo.list_model_versions(s, 1):
            banks = repo.list_bank_versions(s, mv.id)
            if mv.status != RunStatus.DONE.value:  # killed: nothing of it is visible
                assert banks == []
                assert repo.get_batch_by_name(s, 1, validation_batch_name(mv.id)) is None
                continue
            assert [b.version for b in banks] == list(range(1, len(banks) + 1))
            assert sum(b.is_active for b in banks) == 1
            for bank in banks:
                path = ctx.resolve(bank.file_path)
                loaded = MemoryBank.load(path, expected_sha256=bank.sha256)
                assert (len(loaded), loaded.dim) == (bank.vector_count, bank.dim)
                thresholds = repo.list_thresholds(s, bank.id)
                assert sum(t.active for t in thresholds) == 1, bank.version

    # the previously active version still scores, exactly as before
    model = FewShotPatchCore.load(before.model_dir, bank_file=before.bank_file,
                                  bank_sha256=before.bank_sha256)
    assert float(model.score([probe]).scores[0]) == score_before
    # and whatever is active now is usable
    assert load_model(get_active_model(ctx, "w")).model.score([probe]).scores.shape == (1,)
    ctx.close()

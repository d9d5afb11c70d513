"""Issue 9: impossible trainings refused before they start, honest progress and time estimates,
and a Cancel that stops a training inside its coreset within seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import db.jobs as jobs_repo
import db.repositories as repo
from db.models import utcnow
from engine.data import discover
from services import cli
from services.context import Kensa
from services.jobs.api import submit
from services.training.fit import (
    TrainingInputError,
    split_records,
    train_model,
    training_shortfall,
)
from services.training.project import (
    cancel_training,
    get_model_version,
    request_training,
    train_project,
)
from services.training.setup import active_runs, eta_words, training_setup
from tests.services.conftest import PARAMS
from tests.synthetic import make_mvtec


@pytest.mark.parametrize(
    ("counts", "shots", "expected"),
    [
        ((1, 0, 0), None, "Add 2 more good images, or 1 more good image and a few defect images."),
        ((2, 0, 0), None, "Add 1 more good image or a few defect images."),
        ((3, 0, 0), None, None),  # all = 1 learned + 2 kept aside
        ((1, 0, 3), None, "Add 1 more good image so one can be kept aside."),
        ((2, 0, 3), None, None),
        ((1, 2, 0), None, None),  # test/good images are held out anyway
        ((0, 4, 2), None, "Add good images to learn from: the good images in the test folder "
                          "are kept aside to check the model."),
        ((6, 0, 0), 5, "Learn from at most 4 good images, so that 2 stay aside to set the "
                       "threshold."),
        ((6, 0, 0), 4, None),
        ((6, 0, 0), 9, "Choose between 1 and 6 good images to learn from."),
        ((1, 0, 0), 1, "Add 2 more good images, or 1 more good image and a few defect images."),
    ],
)
def test_shortfall_is_one_plain_sentence(counts: tuple[int, int, int], shots: int | None,
                                         expected: str | None) -> None:
    assert training_shortfall(*counts, shots) == expected


def test_all_keeps_back_what_the_threshold_needs(tmp_path: Path) -> None:
    """'All' with only 3 good images learns from 1 and holds 2 back (seeded), so the training
    the sentence promises really runs; with held-out images already there, nothing changes."""
    index = discover(make_mvtec(tmp_path / "a", n_train=3, n_test_good=0, n_defect=0),
                     validate=False)
    train, held = split_records(index, None, seed=0)
    assert len(train) == 1 and len(held) == 2 and {r.label for r in held} == {"good"}
    assert split_records(index, None, seed=0) == (train, held)
    index = discover(make_mvtec(tmp_path / "b", n_train=5, n_test_good=2, n_defect=1),
                     validate=False)
    train, held = split_records(index, None, seed=0)
    assert len(train) == 5 and len(held) == 3
    one = discover(make_mvtec(tmp_path / "c", n_train=1, n_test_good=0, n_defect=0),
                   validate=False)
    started = time.monotonic()
    with pytest.raises(TrainingInputError, match=r"^Add 2 more good images"):
        train_model(one, params=PARAMS)
    assert time.monotonic() - started < 5  # refused before any image is read


def test_impossible_training_is_refused_before_it_starts(
    ctx: Kensa, make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_project("single", n_train=1, n_test_good=0, n_defect=0)
    setup = training_setup(ctx, "single")
    sentence = "Add 2 more good images, or 1 more good image and a few defect images."
    assert setup.can_train and setup.shortfall() == sentence and setup.held_back == 0
    with pytest.raises(TrainingInputError, match=sentence):
        request_training(ctx, "single", params=PARAMS)
    with ctx.session(readonly=True) as s:  # no queued row left behind
        assert repo.list_model_versions(s, repo.get_project_by_name(s, "single").id) == []
    monkeypatch.setenv("KENSA_HOME", str(ctx.home))
    monkeypatch.setenv("DATABASE_URL", ctx.database_url)
    assert cli.main(["--quiet", "train", "single"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {sentence}"

    make_project("three", n_train=3, n_test_good=0, n_defect=0)
    setup = training_setup(ctx, "three")
    assert setup.shortfall() is None and setup.held_back == 2
    assert "takes about" in setup.duration and "estimate" in setup.duration
    assert setup.duration.startswith("Training on this good image and checking 2 held-out")
    assert "(with 12 synthetic defects)" in setup.duration  # no defects: painted ones, timed
    mv = train_project(ctx, "three", params=PARAMS)
    assert mv["status"] == "done" and len(mv["metrics"]["shots"]) == 1
    assert mv["metrics"]["validation_images"] == 2
    assert "last training" in training_setup(ctx, "three").duration  # measured now


def test_cancel_inside_the_coreset_stops_within_seconds(
    ctx: Kensa, make_project: Callable[..., Path]
) -> None:
    """40 images at 384 px make ~92k patches for a 10k bank: the coreset runs for many seconds;
    Cancel pressed once it has started must end the run within 5 s (a bound on the wait)."""
    make_project("big", n_train=40, n_test_good=2, n_defect=0, size=96)
    mv_id = request_training(ctx, "big", params={"image_size": 384})
    other = Kensa.create(ctx.home, ctx.database_url, migrate=False)  # the page's process
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _run_as_job(ctx, mv_id)
        except BaseException as exc:  # noqa: BLE001 - the thread's outcome is checked below
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    while get_model_version(other, mv_id)["stage"] != "selecting coreset":
        assert thread.is_alive() and time.monotonic() < deadline, "never reached the coreset"
        time.sleep(0.1)
    assert cancel_training(other, mv_id)
    asked = time.monotonic()
    thread.join(timeout=5.0)
    waited = time.monotonic() - asked
    other.close()
    assert not thread.is_alive(), f"still computing {waited:.1f} s after Cancel"
    mv = get_model_version(ctx, mv_id)
    assert mv["status"] == "cancelled" and mv["stage"] == "selecting coreset"
    assert errors and "cancelled" in str(errors[0])


def _run_as_job(ctx: Kensa, mv_id: int) -> None:
    """The job path of a page's training (claim, heartbeat, handler), in this process."""
    from services.jobs.api import run_inline

    job_id = submit(ctx, "train", {"model_version_id": mv_id},
                    project_id=get_model_version(ctx, mv_id)["project_id"])
    run_inline(ctx, job_id)


def test_running_job_gets_a_time_estimate_from_its_rate(
    ctx: Kensa, make_project: Callable[..., Path]
) -> None:
    make_project("w", n_train=4, n_test_good=2, n_defect=1)
    mv_id = request_training(ctx, "w", params=PARAMS)
    job_id = submit(ctx, "train", {"model_version_id": mv_id},
                    project_id=get_model_version(ctx, mv_id)["project_id"])
    with ctx.session() as s:  # a worker took it 40 s ago and is half way through
        assert jobs_repo.claim_job(s, job_id, "test-worker")
        repo.start_model_version(s, mv_id, stage="extracting features")
        jobs_repo.report_job(s, job_id, "test-worker", progress=0.5, stage="extracting features")
        job = jobs_repo.get_job(s, job_id)
        job.started_at = utcnow() - timedelta(seconds=40)
    (run,) = active_runs(ctx, "w")
    assert run["eta_s"] == pytest.approx(40.0, abs=2.0) and run["eta"] == "about 40 s left"
    assert run["silent_s"] < 5
    assert eta_words(None) is None and eta_words(3) == "about 5 s left"
    assert eta_words(200) == "about 3 min left"
    cancel_training(ctx, mv_id)

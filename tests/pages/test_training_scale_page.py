"""Issue 9 on the Training and home pages: an impossible training is blocked with one
sentence, a running training shows a time estimate, a failed one shows on the home card."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import db.jobs as jobs_repo
import db.repositories as repo
from db.models import RunStatus, utcnow
from services.context import Kensa
from tests.pages.conftest import open_app, texts

TRAINING = "app_pages/training.py"
SENTENCE = "Add 2 more good images, or 1 more good image and a few defect images."


def _train_button(at):  # noqa: ANN001, ANN202 - AppTest widgets are untyped
    (button,) = [b for b in at.button if b.label == "Train"]
    return button


def test_single_good_image_blocks_train_with_one_sentence(home: Path, ctx: Kensa,
                                                           make_project) -> None:  # noqa: ANN001
    make_project("one", n_train=1, n_test_good=0, n_defect=0)
    at = open_app(TRAINING, "one")
    assert not at.exception
    assert _train_button(at).disabled
    assert SENTENCE in [w.value for w in at.warning]
    assert "works from a single good image" not in texts(at)

    make_project("three", n_train=3, n_test_good=0, n_defect=0)
    at = open_app(TRAINING, "three")
    assert not _train_button(at).disabled and SENTENCE not in texts(at)
    assert "takes about" in texts(at)  # the duration claim is computed, not written in
    assert "2 kept aside to set the threshold" in at.radio(key="tr_use_all").options[0]


def test_running_training_shows_a_time_estimate(home: Path, ctx: Kensa,
                                                make_project) -> None:  # noqa: ANN001
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    with ctx.session() as s:
        project = repo.get_project_by_name(s, "widgets")
        mv = repo.create_model_version(s, project.id, "kensa_patchcore", "efficientnet_lite0")
        mv_id, project_id = mv.id, project.id
    job_id = _queued_job(ctx, mv_id, project_id)
    with ctx.session() as s:  # as a worker 30 s into the run, 60 % done
        assert jobs_repo.claim_job(s, job_id, "page-test-worker")
        repo.start_model_version(s, mv_id, stage="selecting coreset")
        jobs_repo.report_job(s, job_id, "page-test-worker", progress=0.6,
                             stage="selecting coreset")
        jobs_repo.get_job(s, job_id).started_at = utcnow() - timedelta(seconds=30)
    at = open_app(TRAINING, "widgets")
    assert not at.exception
    (bar,) = at.get("progress")
    assert "selecting coreset" in bar.proto.text and "about 20 s left" in bar.proto.text
    assert "has probably stopped" not in texts(at)  # the heartbeat is fresh


def _queued_job(ctx: Kensa, mv_id: int, project_id: int) -> int:
    """A train job row with no worker behind it (pages only read the row)."""
    with ctx.session() as s:
        return jobs_repo.create_job(s, "train", {"model_version_id": mv_id},
                                    project_id=project_id).id


def test_failed_last_training_shows_on_the_home_card(home: Path, ctx: Kensa,
                                                     make_project) -> None:  # noqa: ANN001
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    with ctx.session() as s:
        project = repo.get_project_by_name(s, "widgets")
        mv = repo.create_model_version(s, project.id, "kensa_patchcore", "efficientnet_lite0")
        repo.start_model_version(s, mv.id, stage="extracting features")
        repo.finish_model_version(s, mv.id, RunStatus.FAILED.value,
                                  error="the worker ran out of memory")
    at = open_app()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("failed" in e and "the worker ran out of memory" in e for e in errors), errors

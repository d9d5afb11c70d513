"""Every repository function, on a database built by ``alembic upgrade head``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

import db.repositories as repo
from db.models import RunStatus, StateKind, StateVersion, Threshold
from db.session import session_scope


def _img(i: int, **kw: Any) -> dict[str, Any]:
    row = {"path": f"img/{i:03d}.png", "sha256": f"{i:064x}", "split": "train", "label": "good"}
    return {**row, **kw}


def _pred(i: int, bank_id: int, threshold_id: int | None = None, **kw: Any) -> dict[str, Any]:
    row = {
        "image_sha256": f"{i:064x}",
        "image_path": f"batch/{i:03d}.png",
        "state_version_id": bank_id,
        "threshold_id": threshold_id,
        "raw_score": float(i),
        "verdict": "good",
    }
    return {**row, **kw}


def _bank(session: Any, mv_id: int, **kw: Any) -> StateVersion:
    args = {"kind": StateKind.INITIAL, "state_format": "kensa_patchcore", "directory": "m",
            "files": {"bank.safetensors": "s"}, "vector_count": 10, "dim": 4}
    return repo.add_state_version(session, mv_id, **{**args, **kw})


@pytest.fixture
def project_id(engine: Engine) -> int:
    with session_scope(engine) as s:
        return repo.create_project(s, "bottle", "/data/bottle").id


@pytest.fixture
def bank_id(engine: Engine, project_id: int) -> int:
    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "patchcore")
        return _bank(s, mv.id).id


# --------------------------------------------------------------------------- projects


def test_projects_create_get_list_update_delete(engine: Engine) -> None:
    with session_scope(engine) as s:
        b = repo.create_project(s, "bottle", "/d/b", {"shots": 4})
        repo.create_project(s, "apple", "/d/a")
    with session_scope(engine, readonly=True) as s:
        assert [p.name for p in repo.list_projects(s)] == ["apple", "bottle"]
        got = repo.get_project(s, b.id)
        assert got is not None and got.settings == {"shots": 4} and got.data_root == "/d/b"
        assert got.created_at.tzinfo is not None
        assert repo.get_project_by_name(s, "apple") is not None
        assert repo.get_project_by_name(s, "nope") is None
        assert repo.get_project(s, 999) is None
    with session_scope(engine) as s:
        repo.update_project_settings(s, b.id, {"shots": 8})
    with session_scope(engine) as s:
        assert repo.get_project(s, b.id).settings == {"shots": 8}  # type: ignore[union-attr]
        assert repo.delete_project(s, b.id) is True
        assert repo.delete_project(s, b.id) is False
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.create_project(s, "apple", "/elsewhere")


def test_delete_project_cascades_through_history(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        repo.add_images(s, project_id, [_img(1)])
        mv = repo.create_model_version(s, project_id, "patchcore")
        bank = _bank(s, mv.id)
        thr = repo.add_threshold(s, bank.id, method="f1", raw_value=1.0)
        batch = repo.create_batch(s, project_id, "b1")
        repo.add_predictions(s, batch.id, [_pred(1, bank.id, thr.id)])
        repo.add_drift_reports(s, batch.id, [{"statistic": "ks", "value": 0.1}])
    with session_scope(engine) as s:
        assert repo.delete_project(s, project_id)
    with session_scope(engine, readonly=True) as s:
        assert repo.project_counts(s, project_id) == dict.fromkeys(
            repo.project_counts(s, project_id), 0
        )
        assert repo.get_state_version(s, bank.id) is None


# --------------------------------------------------------------------------- images


def test_add_images_skips_known_sha_and_filters_paginate(engine: Engine, project_id: int) -> None:
    rows = [_img(i) for i in range(6)]
    rows += [_img(10 + i, split="test", label="defect", defect_type="crack") for i in range(3)]
    rows += [_img(20, split="test", label="defect", defect_type="scratch", mask_path="m.png")]
    with session_scope(engine) as s:
        assert repo.add_images(s, project_id, rows) == 10
        # re-import: known sha256 skipped, the new one inserted
        assert repo.add_images(s, project_id, [_img(0), _img(30, split="val")]) == 1
        assert repo.add_images(s, project_id, []) == 0
    with session_scope(engine, readonly=True) as s:
        assert repo.count_images(s, project_id) == 11
        assert repo.count_images(s, project_id, label="defect") == 4
        assert repo.count_images(s, project_id, split="test", defect_type="crack") == 3
        page1 = repo.list_images(s, project_id, split="train", limit=4)
        page2 = repo.list_images(s, project_id, split="train", offset=4, limit=4)
        assert [i.path for i in page1 + page2] == [f"img/{i:03d}.png" for i in range(6)]
        assert len(page2) == 2
        (scratch,) = repo.list_images(s, project_id, defect_type="scratch")
        assert scratch.mask_path == "m.png" and scratch.created_at.tzinfo is not None
        assert repo.image_counts(s, project_id) == {
            ("train", "good", None): 6,
            ("test", "defect", "crack"): 3,
            ("test", "defect", "scratch"): 1,
            ("val", "good", None): 1,
        }
        assert repo.get_image_by_sha(s, project_id, f"{20:064x}").id == scratch.id  # type: ignore[union-attr]
        assert repo.get_image_by_sha(s, project_id, "f" * 64) is None


def test_add_images_rejects_unknown_columns_and_bad_enums(engine: Engine, project_id: int) -> None:
    with pytest.raises(ValueError, match="colour"), session_scope(engine) as s:
        repo.add_images(s, project_id, [_img(1, colour="red")])
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.add_images(s, project_id, [_img(1, label="broken")])
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.add_images(s, 999, [_img(1)])  # foreign key


# --------------------------------------------------------------------------- problems
# (augmentation presets: tests/db/test_presets.py)


def test_problems_add_list_replace(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        n = repo.add_problems(
            s,
            project_id,
            [
                {"path": "b.png", "kind": "unreadable", "message": "truncated"},
                {"path": "a.png", "kind": "no_mask", "message": ""},
            ],
        )
        assert n == 2
    with session_scope(engine) as s:
        assert [p.path for p in repo.list_problems(s, project_id)] == ["a.png", "b.png"]
        repo.add_problems(s, project_id, [{"path": "c.png", "kind": "duplicate"}], replace=True)
    with session_scope(engine, readonly=True) as s:
        (only,) = repo.list_problems(s, project_id)
        assert (only.path, only.kind, only.message) == ("c.png", "duplicate", "")


# --------------------------------------------------------------------------- model versions


def test_model_version_lifecycle(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "patchcore", "efficientnet_lite0", {"k": 4})
        assert (mv.status, mv.progress, mv.params) == ("queued", 0.0, {"k": 4})
    with session_scope(engine) as s:
        assert repo.start_model_version(s, mv.id, stage="features")
    for p, stage in [(0.25, "features"), (0.5, None), (7.0, "coreset")]:
        with session_scope(engine) as s:
            assert repo.update_progress(s, mv.id, p, stage)
    with session_scope(engine, readonly=True) as s:
        got = repo.get_model_version(s, mv.id)
        assert got is not None and got.status == "running" and got.started_at is not None
        assert (got.progress, got.stage) == (1.0, "coreset")  # clamped to the CHECK range
        # every progress write is a sign of life: the page tells a dead worker by its silence
        assert got.heartbeat_at is not None and got.heartbeat_at >= got.started_at
    with session_scope(engine) as s:
        assert repo.finish_model_version(
            s, mv.id, RunStatus.DONE, metrics={"auroc": 0.9}, fit_seconds=1.5, artifact_dir="/a"
        )
        assert not repo.update_progress(s, mv.id, 0.1)  # finished runs do not move
    with session_scope(engine, readonly=True) as s:
        done = repo.get_model_version(s, mv.id)
        assert done is not None and done.status == "done" and done.metrics == {"auroc": 0.9}
        assert done.finished_at is not None and done.finished_at >= done.started_at  # type: ignore[operator]
        assert (done.fit_seconds, done.artifact_dir, done.error) == (1.5, "/a", None)
    with session_scope(engine) as s:
        repo.set_model_metrics(s, mv.id, {"auroc": 0.95})
        assert repo.get_model_version(s, mv.id).metrics == {"auroc": 0.95}  # type: ignore[union-attr]
    with pytest.raises(ValueError), session_scope(engine) as s:
        repo.finish_model_version(s, mv.id, RunStatus.RUNNING)


def test_cancel_reaches_the_worker_and_sticks(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "padim")
        repo.start_model_version(s, mv.id)
    with session_scope(engine) as s:
        assert repo.cancel_model_version(s, mv.id)
    with session_scope(engine) as s:
        assert not repo.update_progress(s, mv.id, 0.7, "fit")  # worker learns it must stop
        assert not repo.finish_model_version(s, mv.id, RunStatus.FAILED, error="boom")
        assert not repo.start_model_version(s, mv.id)
        assert not repo.cancel_model_version(s, mv.id)
    with session_scope(engine, readonly=True) as s:
        got = repo.get_model_version(s, mv.id)
        assert got is not None and got.status == "cancelled" and got.error is None


def test_list_model_versions_newest_first_with_status(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        ids = [repo.create_model_version(s, project_id, a).id for a in ("a", "b", "c")]
        repo.finish_model_version(s, ids[1], RunStatus.FAILED, error="oom")
    with session_scope(engine, readonly=True) as s:
        assert [m.id for m in repo.list_model_versions(s, project_id)] == ids[::-1]
        (failed,) = repo.list_model_versions(s, project_id, status="failed")
        assert (failed.id, failed.error) == (ids[1], "oom")


def test_progress_check_constraint(engine: Engine, project_id: int) -> None:
    from db.models import ModelVersion

    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(ModelVersion(project_id=project_id, algorithm="x", progress=1.5))
        s.flush()


# --------------------------------------------------------------------------- bank versions


def test_bank_version_chain(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "patchcore")
        assert repo.get_active_state_version(s, mv.id) is None
        v1 = _bank(s, mv.id, source_images=["a" * 64, "b" * 64])
        v2 = _bank(s, mv.id, kind=StateKind.INCREMENTAL, vector_count=15, note="3 new goods")
        v3 = _bank(s, mv.id, kind="online")
    with session_scope(engine, readonly=True) as s:
        banks = repo.list_state_versions(s, mv.id)
        assert [b.version for b in banks] == [1, 2, 3]
        assert [b.parent_id for b in banks] == [None, v1.id, v2.id]
        assert [b.is_active for b in banks] == [False, False, True]
        assert banks[0].source_images == ["a" * 64, "b" * 64]
        assert banks[1].note == "3 new goods" and banks[1].vector_count == 15
        assert repo.get_active_state_version(s, mv.id).id == v3.id  # type: ignore[union-attr]
        assert repo.get_state_version(s, v2.id).kind == "incremental"  # type: ignore[union-attr]


def test_bank_versions_number_per_model_version(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        a = repo.create_model_version(s, project_id, "patchcore")
        b = repo.create_model_version(s, project_id, "patchcore")
        _bank(s, a.id)
        _bank(s, a.id)
        b1 = _bank(s, b.id)
        assert (b1.version, b1.parent_id) == (1, None)
        assert repo.get_active_state_version(s, a.id).version == 2  # type: ignore[union-attr]
    with pytest.raises(LookupError), session_scope(engine) as s:
        _bank(s, 999)


def test_one_active_bank_is_enforced_by_the_database(engine: Engine, bank_id: int) -> None:
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        first = repo.get_state_version(s, bank_id)
        assert first is not None
        s.add(
            StateVersion(
                model_version_id=first.model_version_id, version=2, kind="online",
                state_format="kensa_patchcore", is_active=True,
            )
        )
        s.flush()


def test_rollback_appends_a_version_and_copies_the_threshold(
    engine: Engine, project_id: int
) -> None:
    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "patchcore")
        v1 = _bank(s, mv.id, directory="m/1", files={"model.json": "j1", "bank.safetensors": "h1"},
                   vector_count=10)
        repo.add_threshold(s, v1.id, method="f1", raw_value=2.5, params={"band": [2.0, 3.0]})
        _bank(s, mv.id, kind="incremental", directory="m/2", files={"bank.safetensors": "h2"})
        repo.add_threshold(s, repo.get_active_state_version(s, mv.id).id, method="f1", raw_value=9)  # type: ignore[union-attr]
    with session_scope(engine) as s:
        v3 = repo.rollback_state_version(s, mv.id, v1.id, created_by="alice")
    with session_scope(engine, readonly=True) as s:
        assert (v3.version, v3.kind, v3.parent_id) == (3, "rollback", v1.id)
        assert (v3.directory, v3.files, v3.vector_count, v3.state_format) == (
            "m/1", {"model.json": "j1", "bank.safetensors": "h1"}, 10, "kensa_patchcore")
        assert repo.get_active_state_version(s, mv.id).id == v3.id  # type: ignore[union-attr]
        thr = repo.get_active_threshold_for_model(s, mv.id)
        assert thr is not None and thr.state_version_id == v3.id
        assert (thr.raw_value, thr.params, thr.created_by) == (2.5, {"band": [2.0, 3.0]}, "alice")
        assert len(repo.list_state_versions(s, mv.id)) == 3
    with pytest.raises(LookupError), session_scope(engine) as s:
        other = repo.create_model_version(s, project_id, "patchcore")
        repo.rollback_state_version(s, other.id, v1.id)


# --------------------------------------------------------------------------- thresholds


def test_threshold_history_keeps_old_rows(engine: Engine, bank_id: int) -> None:
    with session_scope(engine) as s:
        assert repo.get_active_threshold(s, bank_id) is None
        t1 = repo.add_threshold(s, bank_id, method="f1", raw_value=3.0, normalized_value=0.5)
    with session_scope(engine) as s:
        t2 = repo.add_threshold(
            s, bank_id, method="manual", raw_value=3.4, params={"k": 3}, created_by="bob"
        )
    with session_scope(engine) as s:
        t3 = repo.add_threshold(s, bank_id, method="percentile", raw_value=3.1)
    with session_scope(engine, readonly=True) as s:
        history = repo.list_thresholds(s, bank_id)
        assert [t.id for t in history] == [t1.id, t2.id, t3.id]
        assert [t.active for t in history] == [False, False, True]
        assert [t.method for t in history] == ["f1", "manual", "percentile"]
        assert (history[1].created_by, history[1].params) == ("bob", {"k": 3})
        assert repo.get_active_threshold(s, bank_id).id == t3.id  # type: ignore[union-attr]
        assert repo.get_threshold(s, t1.id).normalized_value == 0.5  # type: ignore[union-attr]
        assert t1.created_at <= t3.created_at


def test_thresholds_are_per_bank_version(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "patchcore")
        v1 = _bank(s, mv.id)
        t1 = repo.add_threshold(s, v1.id, method="f1", raw_value=1.0)
        v2 = _bank(s, mv.id)
        assert repo.get_active_threshold_for_model(s, mv.id) is None  # v2 has none yet
        t2 = repo.add_threshold(s, v2.id, method="f1", raw_value=2.0)
    with session_scope(engine, readonly=True) as s:
        assert repo.get_active_threshold(s, v1.id).id == t1.id  # type: ignore[union-attr]
        assert repo.get_active_threshold_for_model(s, mv.id).id == t2.id  # type: ignore[union-attr]
    with pytest.raises(LookupError), session_scope(engine) as s:
        repo.add_threshold(s, 999, method="f1", raw_value=1.0)


def test_one_active_threshold_is_enforced_by_the_database(engine: Engine, bank_id: int) -> None:
    with session_scope(engine) as s:
        repo.add_threshold(s, bank_id, method="f1", raw_value=1.0)
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(Threshold(state_version_id=bank_id, method="x", raw_value=2.0, active=True))
        s.flush()


# --------------------------------------------------------------------------- batches, predictions


def test_batches_create_get_list_finish(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        b1 = repo.create_batch(s, project_id, "2026-01-01", source="/line1")
        b2 = repo.create_batch(s, project_id, "2026-01-02")
    with session_scope(engine) as s:
        when = datetime(2026, 1, 2, 10, tzinfo=UTC) + timedelta(hours=1)
        repo.finish_batch(s, b1.id, when)
        repo.finish_batch(s, b2.id)
    with session_scope(engine, readonly=True) as s:
        assert [b.id for b in repo.list_batches(s, project_id)] == [b1.id, b2.id]
        got = repo.get_batch(s, b1.id)
        assert got is not None and got.finished_at == when and got.source == "/line1"
        assert repo.get_batch_by_name(s, project_id, "2026-01-02").id == b2.id  # type: ignore[union-attr]
        assert repo.get_batch_by_name(s, project_id, "nope") is None
        assert repo.get_batch(s, 999) is None
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.create_batch(s, project_id, "2026-01-01")  # unique per project


def test_predictions_bulk_list_skip_and_review(
    engine: Engine, project_id: int, bank_id: int
) -> None:
    with session_scope(engine) as s:
        thr = repo.add_threshold(s, bank_id, method="f1", raw_value=5.0)
        batch = repo.create_batch(s, project_id, "b1")
        rows = [_pred(i, bank_id, thr.id) for i in range(5)]
        rows += [
            _pred(i, bank_id, thr.id, verdict="defect", regions=[{"box": [1, 2, 3, 4]}])
            for i in range(5, 8)
        ]
        assert repo.add_predictions(s, batch.id, rows) == 8
    with session_scope(engine) as s:
        # resuming a batch: the already scored images are skipped, not duplicated
        assert repo.scored_shas(s, batch.id) == {f"{i:064x}" for i in range(8)}
        assert repo.add_predictions(s, batch.id, [_pred(7, bank_id), _pred(8, bank_id)]) == 1
    with session_scope(engine, readonly=True) as s:
        preds = repo.list_predictions(s, batch.id)
        assert [p.raw_score for p in preds] == [float(i) for i in range(9)]
        defects = repo.list_predictions(s, batch.id, verdict="defect")
        assert [p.regions for p in defects] == [[{"box": [1, 2, 3, 4]}]] * 3
        assert len(repo.list_predictions(s, batch.id, offset=6, limit=2)) == 2
        assert repo.batch_scores(s, batch.id) == [float(i) for i in range(9)]
        assert repo.batch_scores(s, batch.id, normalized=True) == []
    with session_scope(engine) as s:
        assert repo.review_prediction(s, preds[0].id, "defect")
        assert not repo.review_prediction(s, 99_999, "good")
    with session_scope(engine, readonly=True) as s:
        first = repo.list_predictions(s, batch.id, limit=1)[0]
        assert first.reviewed_verdict == "defect" and first.reviewed_at is not None
    with session_scope(engine) as s:
        repo.review_prediction(s, preds[0].id, None)
        first = repo.list_predictions(s, batch.id, limit=1)[0]
        assert (first.reviewed_verdict, first.reviewed_at) == (None, None)
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.review_prediction(s, preds[1].id, "maybe")


def test_prediction_foreign_keys_are_enforced(
    engine: Engine, project_id: int, bank_id: int
) -> None:
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.add_predictions(s, 12345, [_pred(1, bank_id)])  # bogus batch
    with session_scope(engine) as s:
        batch = repo.create_batch(s, project_id, "b")
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.add_predictions(s, batch.id, [_pred(1, 777)])  # bogus bank version
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.add_predictions(s, batch.id, [_pred(1, bank_id, threshold_id=888)])


def test_bank_with_predictions_cannot_be_deleted(
    engine: Engine, project_id: int, bank_id: int
) -> None:
    with session_scope(engine) as s:
        batch = repo.create_batch(s, project_id, "b")
        repo.add_predictions(s, batch.id, [_pred(1, bank_id)])
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.delete(repo.get_state_version(s, bank_id))
        s.flush()


# --------------------------------------------------------------------------- drift, history


def test_drift_reports(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        b1 = repo.create_batch(s, project_id, "b1")
        b2 = repo.create_batch(s, project_id, "b2")
        repo.add_drift_reports(s, b1.id, [{"statistic": "ks", "value": 0.1, "p_value": 0.4}])
        added = repo.add_drift_reports(
            s,
            b2.id,
            [
                {"statistic": "ks", "value": 0.6, "p_value": 0.001, "alert": True},
                {"statistic": "psi", "value": 0.3, "details": {"bins": 10}},
            ],
        )
        assert all(r.id is not None for r in added)
        other = repo.create_project(s, "other", "/o")
        ob = repo.create_batch(s, other.id, "b1")
        repo.add_drift_reports(s, ob.id, [{"statistic": "ks", "value": 0.9}])
    with session_scope(engine, readonly=True) as s:
        assert [r.statistic for r in repo.list_drift_reports(s, batch_id=b2.id)] == ["ks", "psi"]
        reports = repo.list_drift_reports(s, project_id=project_id)
        assert [(r.batch_id, r.alert) for r in reports] == [
            (b1.id, False),
            (b2.id, True),
            (b2.id, False),
        ]
        assert reports[2].details == {"bins": 10} and reports[1].p_value == 0.001


def test_history_counts(engine: Engine, project_id: int, bank_id: int) -> None:
    with session_scope(engine) as s:
        repo.add_images(s, project_id, [_img(i) for i in range(3)])
        repo.add_problems(s, project_id, [{"path": "x", "kind": "unreadable"}])
        b1 = repo.create_batch(s, project_id, "b1", source="/in")
        b2 = repo.create_batch(s, project_id, "b2")
        repo.create_batch(s, project_id, "empty")
        repo.add_predictions(
            s,
            b1.id,
            [
                _pred(1, bank_id, raw_score=1.0),
                _pred(2, bank_id, raw_score=3.0, verdict="defect"),
                _pred(3, bank_id, raw_score=2.0, verdict="review"),
            ],
        )
        repo.add_predictions(s, b2.id, [_pred(1, bank_id, raw_score=4.0, verdict="defect")])
        repo.review_prediction(s, repo.list_predictions(s, b1.id)[2].id, "good")
        repo.add_drift_reports(
            s,
            b2.id,
            [{"statistic": "ks", "value": 1, "alert": True}, {"statistic": "psi", "value": 1}],
        )
    with session_scope(engine, readonly=True) as s:
        counts = repo.project_counts(s, project_id)
        summaries = repo.batch_summaries(s, project_id)
    assert counts == {
        "images": 3,
        "problems": 1,
        "model_versions": 1,
        "state_versions": 1,
        "batches": 3,
        "predictions": 4,
        "drift_alerts": 1,
    }
    s1, s2, empty = summaries
    assert (s1.name, s1.source, s1.predictions, s1.good, s1.defect, s1.review) == (
        "b1",
        "/in",
        3,
        1,
        1,
        1,
    )
    assert (s1.reviewed, s1.mean_score, s1.max_score, s1.alerts) == (1, 2.0, 3.0, 0)
    assert (s2.predictions, s2.defect, s2.alerts, s2.max_score) == (1, 1, 1, 4.0)
    assert (empty.predictions, empty.mean_score, empty.alerts) == (0, None, 0)


def test_write_scope_rolls_back_on_error(engine: Engine) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        repo.create_project(s, "ghost", "/g")
        raise RuntimeError("service failed half-way")
    with session_scope(engine, readonly=True) as s:
        assert s.execute(select(repo.Project)).first() is None


def test_updates_refresh_objects_already_in_the_session(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "patchcore")
        repo.start_model_version(s, mv.id)
        repo.update_progress(s, mv.id, 0.4, "fit")
        assert (mv.status, mv.progress, mv.stage) == ("running", 0.4, "fit")
        bank = _bank(s, mv.id)
        t1 = repo.add_threshold(s, bank.id, method="f1", raw_value=1.0)
        repo.add_threshold(s, bank.id, method="f1", raw_value=2.0)
        assert t1.active is False


# --------------------------------------------------------------------------- provenance


def test_provenance_ids_are_issued_once_per_model_version(engine: Engine, project_id: int) -> None:
    def rows(ids: range) -> list[dict[str, Any]]:
        return [{"record_id": i, "path": f"g{i}.png", "sha256": f"{i:064x}", "view": "rot0",
                 "height": 96, "width": 96, "grid_height": 12, "grid_width": 12} for i in ids]

    with session_scope(engine) as s:
        mv = repo.create_model_version(s, project_id, "kensa_patchcore")
        other = repo.create_model_version(s, project_id, "kensa_patchcore")
        assert repo.next_provenance_id(s, mv.id) == 0
        v1 = _bank(s, mv.id)
        assert repo.add_provenance(s, mv.id, v1.id, rows(range(0, 4))) == 4
        v2 = _bank(s, mv.id, kind="incremental")
        repo.add_provenance(s, mv.id, v2.id, rows(range(4, 6)))
        repo.rollback_state_version(s, mv.id, v1.id)
        assert repo.next_provenance_id(s, mv.id) == 6  # v2's ids stay spent after the rollback
        assert repo.next_provenance_id(s, other.id) == 0  # ids are per model version
        found = repo.get_provenance(s, mv.id, [5, 1, 99])
        assert [(r.record_id, r.path, r.state_version_id) for r in found] == [
            (1, "g1.png", v1.id), (5, "g5.png", v2.id)]
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        repo.add_provenance(s, mv.id, v2.id, rows(range(5, 7)))  # 5 again: refused

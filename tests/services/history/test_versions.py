"""Thresholds, bank updates, rollback and the history view: history is appended, never edited."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest

import db.repositories as repo
from engine.data import load_image, sha256_file
from engine.memory_bank import MemoryBank
from services.context import Kensa
from services.history.versions import history, rollback, set_threshold, update_bank
from services.inference.batches import get_active_model, load_model


def _score(ctx: Kensa, project: str, image: Path) -> float:
    loaded = load_model(get_active_model(ctx, project))
    return float(loaded.model.score([load_image(image)]).scores[0])


def test_set_threshold_keeps_the_old_rows(
    ctx: Kensa, project: str, trained: dict[str, Any]
) -> None:
    first = history(ctx, project)["thresholds"]
    assert len(first) == 1 and first[0]["active"]
    validated = first[0]["raw_value"]
    row = set_threshold(ctx, project, validated * 1.1, created_by="alice")
    assert row["active"] and row["method"] == "manual" and row["created_by"] == "alice"
    assert row["normalized_value"] > 0.5  # above the validated threshold on the same scale
    set_threshold(ctx, project, validated * 0.9)
    rows = history(ctx, project)["thresholds"]
    assert [r["raw_value"] for r in rows] == pytest.approx(
        [validated, validated * 1.1, validated * 0.9]
    )
    assert [r["active"] for r in rows] == [False, False, True]
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            set_threshold(ctx, project, bad)


def test_update_bank_adds_a_version_with_a_revalidated_threshold(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any
) -> None:
    folder = new_goods(2)
    (folder / "broken.png").write_bytes(b"garbage")
    bank = update_bank(ctx, project, [folder], note="two new goods")
    assert (bank["version"], bank["kind"], bank["parent"], bank["active"]) == (
        2, "incremental", 1, True
    )
    assert bank["note"] == "two new goods"
    assert sorted(bank["source_images"]) == sorted(
        sha256_file(p) for p in folder.glob("new_*.png")
    )
    assert [Path(p["path"]).name for p in bank["problems"]] == ["broken.png"]
    assert MemoryBank.load(Path(bank["file"]), expected_sha256=bank["sha256"])
    thr = bank["threshold"]
    assert thr["created_by"] == "update_bank" and thr["method"] == "f1_optimal"
    with ctx.session(readonly=True) as s:
        params = repo.get_threshold(s, thr["id"]).params
    assert params["revalidated_on"] == 8  # every held-out image still exists
    h = history(ctx, project)
    assert [(b["version"], b["active"]) for b in h["memory_bank_versions"]] == [
        (1, False), (2, True)
    ]
    assert h["memory_bank_versions"][0]["vector_count"] <= bank["vector_count"]


def test_update_bank_keeps_the_threshold_when_validation_images_are_gone(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path, new_goods: Any
) -> None:
    before = history(ctx, project)["thresholds"][-1]
    shutil.rmtree(dataset / "test")
    for p in (dataset / "train" / "good").iterdir():
        p.write_bytes(b"changed")  # same paths, other content: not the validated images
    bank = update_bank(ctx, project, [new_goods(1)])
    assert bank["threshold"]["raw_value"] == pytest.approx(before["raw_value"])
    assert bank["threshold"]["method"] == before["method"]
    with ctx.session(readonly=True) as s:
        params = repo.get_threshold(s, bank["threshold"]["id"]).params
    assert "no stored validation image" in params["kept"]


def test_rollback_restores_the_old_bank_and_threshold(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path, new_goods: Any
) -> None:
    probe = dataset / "test" / "spot" / "spot_000.png"
    score_v1 = _score(ctx, project, probe)
    v1_threshold = history(ctx, project)["thresholds"][0]
    update_bank(ctx, project, [new_goods(3)])
    set_threshold(ctx, project, 123.0, confirm_extreme=True)  # far above every score
    bank = rollback(ctx, project, 1)
    h = history(ctx, project)
    v1 = h["memory_bank_versions"][0]
    assert (bank["version"], bank["kind"], bank["parent"], bank["active"]) == (
        3, "rollback", 1, True
    )
    assert (bank["sha256"], bank["file"]) == (v1["sha256"], v1["file"])
    assert MemoryBank.load(Path(bank["file"]), expected_sha256=bank["sha256"])
    assert bank["threshold"]["raw_value"] == pytest.approx(v1_threshold["raw_value"])
    assert bank["threshold"]["method"] == v1_threshold["method"]
    assert _score(ctx, project, probe) == pytest.approx(score_v1, rel=1e-6)
    assert [b["active"] for b in h["memory_bank_versions"]] == [False, False, True]
    assert len(h["thresholds"]) == 4  # v1, v2, manual on v2, copy on v3: nothing deleted

    with pytest.raises(ValueError, match="already the active"):
        rollback(ctx, project, 3)
    with pytest.raises(LookupError, match="no bank v9"):
        rollback(ctx, project, 9)


def test_a_tampered_bank_file_is_refused(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any
) -> None:
    update_bank(ctx, project, [new_goods(1)])
    v1 = history(ctx, project)["memory_bank_versions"][0]
    Path(v1["file"]).write_bytes(Path(v1["file"]).read_bytes()[:-8] + b"tampered")
    with pytest.raises(ValueError, match="cannot roll back to v1: .*failed its integrity check"):
        rollback(ctx, project, 1)
    active = get_active_model(ctx, project)
    (active.state_dir / "bank.safetensors").write_bytes(b"not a bank")
    with pytest.raises(ValueError, match="sha256"):
        load_model(active)


def test_history_shape(ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path) -> None:
    h = history(ctx, project)
    assert set(h) >= {"memory_bank_versions", "thresholds", "batches", "predictions_count"}
    (bank,) = h["memory_bank_versions"]
    assert set(bank) >= {"version", "kind", "parent", "vector_count", "sha256", "file",
                         "active", "created_at"}
    assert [b["name"] for b in h["batches"]] == [f"validation-m{trained['id']}"]
    assert h["batches"][0]["predictions"] == 8 and h["predictions_count"] == 8


def test_history_lists_runs_and_a_killed_training_shows_failed_with_the_reason(
    ctx: Kensa, project: str, trained: dict[str, Any]
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    import db.jobs as jobs_repo
    from db.models import Job, utcnow
    from services.jobs import api
    from services.training.project import request_training
    from tests.services.conftest import PARAMS, SHOTS

    mv_id = request_training(ctx, project, SHOTS, 1, PARAMS)
    job_id = api.submit(ctx, "train", {"model_version_id": mv_id}, max_attempts=1,
                        project_id=trained["project_id"])
    with ctx.session() as s:  # a worker took it, started training, then was SIGKILLed
        jobs_repo.claim_job(s, job_id, "gone:1:worker-x")
        repo.start_model_version(s, mv_id, stage="extracting features")
        s.execute(update(Job).where(Job.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=300)))
    runs = history(ctx, project)["runs"]  # reading history reaps: no "running" for ever
    assert [(r["model_version_id"], r["status"]) for r in runs] == [
        (trained["id"], "done"), (mv_id, "failed")]
    dead = runs[1]
    assert dead["job_id"] == job_id and dead["job_status"] == "failed"
    assert dead["error"].startswith("the worker stopped (gone:1:worker-x; no heartbeat for")
    assert dead["error"] == dead["job_error"]
    assert runs[0]["job_status"] == "done" and runs[0]["finished_at"] is not None

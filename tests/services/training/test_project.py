"""Training inside a project: rows, artifacts, validation batch, failure and cancel."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import db.repositories as repo
from engine.data import sha256_file
from engine.memory_bank import MemoryBank
from services.context import Kensa
from services.data.projects import project_status
from services.inference.batches import batch_predictions, validation_batch_name
from services.training.fit import TrainingCancelled
from services.training.project import (
    cancel_training,
    get_model_version,
    list_model_versions,
    request_training,
    run_training,
)
from tests.services.conftest import PARAMS, SHOTS


def test_training_writes_bank_threshold_metrics_and_validation_batch(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path
) -> None:
    mv = trained
    assert mv["status"] == "done" and mv["progress"] == 1.0 and mv["error"] is None
    for key in ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "aupro"):
        assert 0.0 <= mv["metrics"][key] <= 1.0, key
    assert mv["metrics"]["threshold"]["method"] == "f1_optimal"
    assert mv["params"] == {"shots": SHOTS, "seed": 0, "model": PARAMS}
    model_dir = ctx.resolve(mv["artifact_dir"])
    assert (model_dir / "model.json").is_file()

    train_shas = {sha256_file(p) for p in (dataset / "train" / "good").iterdir()}
    with ctx.session(readonly=True) as s:
        (bank,) = repo.list_state_versions(s, mv["id"])
        threshold = repo.get_active_threshold(s, bank.id)
        batch = repo.get_batch_by_name(s, 1, validation_batch_name(mv["id"]))
        preds = repo.list_predictions(s, batch.id)
    assert (bank.version, bank.kind, bank.is_active, bank.parent_id) == (1, "initial", True, None)
    assert len(bank.source_images) == SHOTS and set(bank.source_images) <= train_shas
    assert (bank.state_format, set(bank.files)) == ("kensa_patchcore",
                                                    {"model.json", "bank.safetensors"})
    assert ctx.resolve(bank.directory) == model_dir
    assert bank.files["model.json"] == sha256_file(model_dir / "model.json")
    loaded = MemoryBank.load(model_dir / "bank.safetensors",
                             expected_sha256=bank.files["bank.safetensors"])
    assert (len(loaded), loaded.vectors.shape[1]) == (bank.vector_count, bank.dim)
    assert threshold.method == "f1_optimal" and threshold.created_by == "training"
    assert threshold.raw_value == pytest.approx(mv["metrics"]["threshold"]["value"])
    assert threshold.normalized_value == pytest.approx(0.5)

    # every held-out image once: 2 unused train goods + 3 test goods + 3 defects
    assert batch.source == "validation" and len(preds) == 8
    assert {p.image_sha256 for p in preds}.isdisjoint(bank.source_images)
    for p in preds:
        assert p.state_version_id == bank.id and p.threshold_id == threshold.id
        assert p.verdict == ("defect" if p.raw_score >= threshold.raw_value else "good")
        assert 0.5 <= p.confidence <= 1.0 and 0.0 <= p.normalized_score <= 1.0
        assert ctx.resolve(p.heatmap_path).is_file()
    assert max(preds, key=lambda p: p.raw_score).regions  # the worst one shows where
    rows = batch_predictions(ctx, project, validation_batch_name(mv["id"]))
    assert sorted(r["label"] for r in rows) == ["defect"] * 3 + ["good"] * 5

    status = project_status(ctx, project)
    assert status["active_model_version"]["id"] == mv["id"]
    assert status["active_bank_version"]["version"] == 1
    assert status["active_threshold"]["raw_value"] == pytest.approx(threshold.raw_value)
    assert status["last_batch"]["name"] == validation_batch_name(mv["id"])


def test_bad_parameters_are_refused_before_queueing(ctx: Kensa, project: str) -> None:
    with pytest.raises(ValueError, match="unknown training parameter"):
        request_training(ctx, project, params={"imagesize": 96})
    with pytest.raises(ValueError, match="image_size"):
        request_training(ctx, project, params={"image_size": 10})
    with pytest.raises(ValueError, match="Choose between 1 and 6 good images"):
        request_training(ctx, project, shots=7)
    assert list_model_versions(ctx, project) == []


def test_failure_is_recorded_and_nothing_half_written(
    ctx: Kensa, project: str, dataset: Path
) -> None:
    shutil.rmtree(dataset / "train" / "good")  # imported, then gone from disk
    mv_id = request_training(ctx, project, shots=2, params=PARAMS)
    with pytest.raises(ValueError, match="none of the training images could be read"):
        run_training(ctx, mv_id)
    mv = get_model_version(ctx, mv_id)
    assert mv["status"] == "failed" and "could be read" in mv["error"]
    _assert_no_results(ctx, mv_id)
    with pytest.raises(ValueError, match="only a queued run can start"):
        run_training(ctx, mv_id)


def test_cancel_from_the_row_stops_the_run(ctx: Kensa, project: str) -> None:
    mv_id = request_training(ctx, project, shots=SHOTS, params=PARAMS)
    other = Kensa.create(ctx.home, ctx.database_url, migrate=False)  # as another process would

    def progress(stage: str, fraction: float) -> None:
        if stage == "extracting features":
            assert cancel_training(other, mv_id)

    with pytest.raises(TrainingCancelled):
        run_training(ctx, mv_id, progress=progress)
    other.close()
    assert get_model_version(ctx, mv_id)["status"] == "cancelled"
    _assert_no_results(ctx, mv_id)
    assert not cancel_training(ctx, mv_id)  # already ended


def _assert_no_results(ctx: Kensa, mv_id: int) -> None:
    with ctx.session(readonly=True) as s:
        assert repo.list_state_versions(s, mv_id) == []
        assert repo.get_batch_by_name(s, 1, validation_batch_name(mv_id)) is None

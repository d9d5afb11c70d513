"""score_batch: predictions per image with the active bank and threshold; resumable by sha256."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import db.repositories as repo
from services.context import Kensa
from services.history.versions import set_threshold
from services.inference.batches import batch_predictions, list_batches, score_batch
from tests.synthetic import texture, write_png


def test_batch_has_one_prediction_per_image(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path
) -> None:
    folder = dataset / "test"
    result = score_batch(ctx, project, folder, "line-1")
    assert result.created and result.files == 6 and result.scored == 6 and result.skipped == 0
    assert result.problems == [] and result.bank_version == 1
    with ctx.session(readonly=True) as s:
        batch = repo.get_batch(s, result.batch_id)
        preds = repo.list_predictions(s, result.batch_id)
        threshold = repo.get_active_threshold_for_model(s, trained["id"])
        bank = repo.get_active_state_version(s, trained["id"])
    assert batch.source == str(folder.resolve()) and batch.finished_at is not None
    assert len(preds) == 6 and {p.image_path for p in preds} == {
        str(p) for p in folder.rglob("*.png")
    }
    for p in preds:
        assert p.state_version_id == bank.id and p.threshold_id == threshold.id
        assert p.verdict == ("defect" if p.raw_score >= threshold.raw_value else "good")
        assert 0 <= p.normalized_score <= 1 and 0.5 <= p.confidence <= 1
        assert ctx.resolve(p.heatmap_path) == (
            ctx.heatmap_path(1, result.batch_id, p.image_sha256)
        )
        assert ctx.resolve(p.heatmap_path).is_file()
        for region in p.regions:
            assert {"x", "y", "width", "height", "area", "peak"} <= set(region)
    # the drawn defects are found: the three spots score above every good test image
    scores = {Path(p.image_path).parent.name: [] for p in preds}
    for p in preds:
        scores[Path(p.image_path).parent.name].append(p.raw_score)
    assert min(scores["spot"]) > max(scores["good"])
    rows = batch_predictions(ctx, project, "line-1")
    assert sorted(r["label"] for r in rows) == ["defect"] * 3 + ["good"] * 3


def test_rescoring_skips_known_images_and_names_bad_files(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(dataset / "test" / "good", tmp_path / "incoming")
    first = score_batch(ctx, project, folder, "b")
    assert first.scored == 3
    write_png(folder / "new.png", texture(np.random.default_rng(5), 96))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    shutil.copy(folder / "new.png", folder / "same_as_new.png")
    second = score_batch(ctx, project, folder, "b")
    assert not second.created and second.scored == 1 and second.skipped == 4
    assert [Path(p["path"]).name for p in second.problems] == ["broken.png"]
    assert "broken.png" in second.problems[0]["problem"]
    (summary,) = [b for b in list_batches(ctx, project) if b["name"] == "b"]
    assert summary["predictions"] == 4


def test_scoring_uses_the_active_threshold(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path
) -> None:
    before = score_batch(ctx, project, dataset / "test" / "spot", "before")
    assert {p["verdict"] for p in before.predictions} == {"defect"}
    high = max(p["raw_score"] for p in before.predictions) + 1.0
    row = set_threshold(ctx, project, high, created_by="test")
    after = score_batch(ctx, project, dataset / "test" / "spot", "after")
    assert {p["verdict"] for p in after.predictions} == {"good"}
    assert {p["threshold_id"] for p in after.predictions} == {row["id"]}
    assert after.threshold == pytest.approx(high)
    # normalized scores stay on the bank's calibrated scale when the threshold moves
    assert [p["normalized_score"] for p in after.predictions] == pytest.approx(
        [p["normalized_score"] for p in before.predictions]
    )


def test_scoring_refusals(ctx: Kensa, project: str, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="no trained model yet"):
        score_batch(ctx, project, dataset / "test", "b")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        score_batch(ctx, project, tmp_path / "nothing", "b")
    with pytest.raises(ValueError, match="reserved"):
        score_batch(ctx, project, dataset / "test", "validation-m1")
    with pytest.raises(LookupError, match="no project named"):
        score_batch(ctx, "nope", dataset / "test", "b")


def test_a_model_that_fails_to_load_leaves_no_empty_batch(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path
) -> None:
    from engine.models import ModelStateError
    from services.inference.batches import get_active_model

    active = get_active_model(ctx, project)
    (active.state_dir / "bank.safetensors").write_bytes(b"not a bank")
    with pytest.raises(ModelStateError, match="integrity check"):
        score_batch(ctx, project, dataset / "test", "line-9")
    assert "line-9" not in [b["name"] for b in list_batches(ctx, project)]
    empty = dataset / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        score_batch(ctx, project, empty, "line-10")
    assert "line-10" not in [b["name"] for b in list_batches(ctx, project)]


def test_concurrent_runs_into_one_batch_report_what_each_inserted(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    folder = dataset / "test"
    barrier = threading.Barrier(2, timeout=60)
    known = repo.scored_shas

    def both_read_then_race(session: Any, batch_id: int) -> set[str]:
        out = known(session, batch_id)
        barrier.wait()  # both runs saw an empty batch: each will try to insert every image
        return out

    monkeypatch.setattr(repo, "scored_shas", both_read_then_race)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(score_batch(ctx, project, folder, "shared", chunk=2))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 2
    for r in results:
        assert r.scored == len(r.predictions) and r.skipped == r.files - r.scored
    assert sum(r.scored for r in results) == 6  # every image once, counted by its inserter
    shas = [p["image_sha256"] for r in results for p in r.predictions]
    assert len(shas) == len(set(shas)) == 6
    (summary,) = [b for b in list_batches(ctx, project) if b["name"] == "shared"]
    assert summary["predictions"] == 6

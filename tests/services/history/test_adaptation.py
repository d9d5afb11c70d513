"""Adaptation from the Drift page: candidates, the update job, before/after, online updates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import db.repositories as repo
from services.context import Kensa
from services.history import adaptation
from services.history.adaptation import (
    adapt_from_lot,
    compare_versions,
    good_lot_images,
    job_error_words,
    plan_online,
    review_band,
    save_uploads,
    start_online_update,
    start_update,
    versions,
)
from services.history.versions import rollback, set_threshold
from services.inference.batches import batch_predictions, get_active_model, score_batch
from services.inference.lots import review
from services.jobs.api import get_job


@pytest.fixture
def inline_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KENSA_JOBS_INLINE", "1")


@pytest.fixture
def lot(ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any) -> str:
    score_batch(ctx, project, new_goods(4, seed=7), "lot 1")
    return "lot 1"


def test_update_from_lot_images_then_compare_and_roll_back(
    ctx: Kensa, project: str, lot: str, inline_jobs: None
) -> None:
    goods = good_lot_images(ctx, project, lot)
    assert goods, "the new good textures should mostly score good"
    scores = [g["normalized_score"] for g in goods]
    assert scores == sorted(scores)
    picked = goods[:2]
    job = get_job(ctx, start_update(ctx, project, [g["image_path"] for g in picked]))
    assert job["status"] == "done", job["error"]
    rows = versions(ctx, project)
    assert [(r["version"], r["kind"], r["parent"], r["active"]) for r in rows] == [
        (1, "initial", None, False), (2, "incremental", 1, True)]
    assert rows[1]["label"].endswith("update 1") and rows[1]["threshold"] is not None

    result = compare_versions(ctx, project, 1, 2, lot=lot)
    assert result["left_out"] == 2  # the two learned images say nothing any more
    lot_rows = [r for r in result["rows"] if r["set"] == "lot"]
    assert {r["sha256"] for r in lot_rows}.isdisjoint({g["sha256"] for g in picked})
    assert len(lot_rows) == 4 - 2
    assert any(r["set"] == "validation" for r in result["rows"])
    for r in result["rows"]:  # a bank that only grew never scores an image higher
        assert r["after_raw"] <= r["before_raw"] + 1e-6
    by_set = {s["set"]: s for s in result["summary"]}
    assert by_set["lot"]["images"] == 2 and by_set["validation"]["images"] >= 1
    # what each version is: vectors, the files it learned (names only), what differs
    one, two = result["versions"][1], result["versions"][2]
    assert (one["kind"], two["kind"]) == ("initial", "incremental")
    assert two["vectors"] > one["vectors"] and two["images"] == one["images"] + 2
    names = sorted(Path(g["image_path"]).name for g in picked)
    assert two["learned"] == names and result["added"] == names and result["removed"] == []
    assert all("/" not in n for n in one["learned"]) and len(one["learned"]) == one["images"]

    rollback(ctx, project, 1)
    rows = versions(ctx, project)
    assert (rows[-1]["kind"], rows[-1]["active"], rows[-1]["version"]) == ("rollback", True, 3)


def test_refusal_names_files_not_server_paths(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path, inline_jobs: None
) -> None:
    defect = next(p for p in (dataset / "test").glob("*/*.png") if p.parent.name != "good")
    job = get_job(ctx, start_update(ctx, project, [defect]))
    assert job["status"] == "failed"
    words = job_error_words(job)
    assert defect.name in words and str(defect) not in words
    assert "labelled defect" in words
    assert [r["version"] for r in versions(ctx, project)] == [1]  # nothing was written


def test_save_uploads_keeps_one_file_per_content(ctx: Kensa, project: str, tmp_path: Path
                                                 ) -> None:
    first = save_uploads(ctx, project, [("../../etc/a b.png", b"x1"), ("a b.png", b"x1"),
                                        ("a b.png", b"x2")])
    assert first[0] == first[1] != first[2]
    assert all(p.is_relative_to(ctx.home / "adaptation") and p.read_bytes() for p in first)
    assert " " not in first[0].name and first[0].name.endswith("a_b.png")


def test_adapt_from_lot_learns_chunks_below_the_band_each_a_version(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any, inline_jobs: None,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    score_batch(ctx, project, new_goods(30, seed=21), "lot big")
    preds = {p["image_sha256"]: p for p in batch_predictions(ctx, project, "lot big")}
    plain_band = review_band(ctx, project)["band"]
    below = sorted(p["raw_score"] for p in preds.values() if p["raw_score"] < plain_band.low)
    assert len(below) >= 24, "the new good textures should mostly score well below the band"
    # Widen the band so its lower edge sits at the 21st lowest score: the rest is "review".
    active = get_active_model(ctx, project)
    sigma = review_band(ctx, project)["sigma"]
    monkeypatch.setattr(adaptation, "MARGIN_SIGMA", (active.rule.value - below[20]) / sigma)
    band = review_band(ctx, project)["band"]
    assert band.low == pytest.approx(below[20])
    # A person reviewed the most normal-looking image as a defect: it is never learned.
    vetoed = min(preds.values(), key=lambda p: p["raw_score"])["image_sha256"]
    review(ctx, project, "lot big", vetoed, "defect", "inspector")

    plan = plan_online(ctx, project, "lot big")
    assert plan["in_band"] >= 9 and plan["reviewed_defect"] == 1
    assert [len(c.keys) for c in plan["chunks"]] == [8, 8]
    assert plan["waiting"] == 3  # 20 below the band, 1 vetoed: 16 learned, 3 wait

    job = get_job(ctx, start_online_update(ctx, project, "lot big"))
    assert job["status"] == "done", job["error"]
    rows = versions(ctx, project)
    assert [(r["version"], r["kind"], r["parent"]) for r in rows] == [
        (1, "initial", None), (2, "online", 1), (3, "online", 2)]
    assert job["result"]["versions"] == [2, 3] and job["result"]["first_parent"] == 1
    learned: list[str] = []
    with ctx.session(readonly=True) as s:
        for state in repo.list_state_versions(s, active.model_version_id)[1:]:
            (threshold,) = repo.list_thresholds(s, state.id)  # its own row, one per version
            learned += state.source_images
            assert len(state.source_images) == 8
            assert threshold.method == "running_mean_3sigma" and threshold.active
            window = np.asarray(threshold.params["window_scores"])
            assert threshold.params["window"] == len(window) > 8
            assert threshold.params["mean"] == pytest.approx(window.mean())
            assert threshold.params["std"] == pytest.approx(window.std(ddof=1))
            assert threshold.raw_value == pytest.approx(window.mean() + 3 * window.std(ddof=1))
    assert len(set(learned)) == 16 and vetoed not in learned
    assert all(preds[sha]["raw_score"] < band.low for sha in learned)  # nothing from the band
    # Scores made by v1 say nothing about v3: asking again learns nothing, changes nothing.
    with pytest.raises(ValueError, match="no full chunk"):
        start_online_update(ctx, project, "lot big")
    assert len(versions(ctx, project)) == 3


def test_online_adaptation_keeps_a_manual_threshold(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any, inline_jobs: None
) -> None:
    score_batch(ctx, project, new_goods(16, seed=31), "lot m")
    manual = get_active_model(ctx, project).rule.value * 1.05
    set_threshold(ctx, project, manual)
    result = adapt_from_lot(ctx, project, "lot m")
    assert result["kind"] == "online" and result["threshold"]["method"] == "manual"
    assert result["threshold"]["raw_value"] == pytest.approx(manual)
    assert "manual threshold" in result["threshold_note"]
    assert "proposed suggestion" in result["threshold_note"]

"""services.evaluation.report on stored rows: labels by sha256, counts, worst errors, saving."""

from __future__ import annotations

import numpy as np
import pytest

import db.repositories as repo
from services.context import Kensa
from services.evaluation.report import (
    NothingToEvaluate,
    at_threshold,
    evaluable_versions,
    heatmap_overlay,
    load_evaluation,
    review_band,
    roc_pr,
    save_threshold,
    threshold_history,
    worst_errors,
)
from services.inference.batches import validation_batch_name
from tests.pages.conftest import fake_training

# good_000..good_003 and spot_000..spot_003 (make_mvtec names); an overlap on purpose:
# good_003 scores above spot_000.
SCORES = {"good_000.png": 0.10, "good_001.png": 0.20, "good_002.png": 0.30,
          "good_003.png": 0.65, "spot_000.png": 0.50, "spot_001.png": 0.70,
          "spot_002.png": 0.80, "spot_003.png": 0.90}


@pytest.fixture
def evaluated(ctx: Kensa, make_project) -> int:
    make_project("widgets", n_train=3, n_test_good=4, n_defect=4)
    return fake_training(ctx, "widgets", SCORES, threshold=0.6)


def test_load_joins_labels_by_sha_and_reads_threshold(ctx: Kensa, evaluated: int) -> None:
    ev = load_evaluation(ctx, "widgets", evaluated)
    assert (ev.n_good, ev.n_defect) == (4, 4)
    by_name = {r.name: (r.label, r.score) for r in ev.images}
    assert by_name["good_003.png"] == (0, 0.65) and by_name["spot_000.png"] == (1, 0.50)
    assert ev.threshold == 0.6 and ev.threshold_method == "f1_optimal"
    assert ev.is_active and ev.unmatched == 0
    assert [m["value"] for m in ev.metrics] == ["0.950", "0.900", "0.850", "0.800", "0.700"]
    lo, hi, step = ev.slider_scale()
    assert (lo, hi, step) == (0.084, 0.916, 0.001)


def test_counts_follow_the_threshold(ctx: Kensa, evaluated: int) -> None:
    ev = load_evaluation(ctx, "widgets", evaluated)
    at = at_threshold(ev, 0.6)
    assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (3, 1, 3, 1)
    assert at["missed_defects"] == pytest.approx(0.25)
    assert at["false_alarms"] == pytest.approx(0.25)
    high = at_threshold(ev, 0.95)
    assert (high["tp"], high["fp"], high["precision"]) == (0, 0, None)


def test_worst_errors_come_first(ctx: Kensa, evaluated: int) -> None:
    ev = load_evaluation(ctx, "widgets", evaluated)
    fps, fns = worst_errors(ev, 0.25)
    assert [r.name for r in fps] == ["good_003.png", "good_002.png"]
    assert fns == []
    fps, fns = worst_errors(ev, 0.75)
    assert fps == [] and [r.name for r in fns] == ["spot_000.png", "spot_001.png"]
    assert all(r.heatmap_path for r in fns)


def test_review_band_brackets_the_overlap(ctx: Kensa, evaluated: int) -> None:
    band = review_band(load_evaluation(ctx, "widgets", evaluated))
    assert (band["low"], band["high"]) == (0.50, 0.65)
    counts = band["counts"]
    assert counts["good"] == {"images": 3, "good": 3, "defect": 0}
    # engine.thresholds.ReviewBand: score >= high is "sure defect", so the top good is there
    assert counts["review"] == {"images": 1, "good": 0, "defect": 1}
    assert counts["defect"] == {"images": 4, "good": 1, "defect": 3}
    assert band["overlap"]
    assert (band["low_is"], band["high_is"]) == ("the lowest defect score",
                                                 "the highest good score")


def test_curves_need_both_classes(ctx: Kensa, make_project) -> None:
    make_project("goods", n_train=3, n_test_good=3, n_defect=0)
    mv = fake_training(ctx, "goods", threshold=0.5)
    ev = load_evaluation(ctx, "goods", mv)
    assert not ev.has_both and roc_pr(ev) is None and review_band(ev) is None
    assert at_threshold(ev, 0.5)["missed_defects"] is None


def test_curves_are_computed(ctx: Kensa, evaluated: int) -> None:
    curve = roc_pr(load_evaluation(ctx, "widgets", evaluated))
    assert curve["roc"]["fpr"][0] == 0.0 and curve["roc"]["tpr"][-1] == 1.0
    assert len(curve["pr"]["precision"]) == len(curve["pr"]["thresholds"]) + 1


def test_prediction_of_a_removed_image_is_counted_not_guessed(ctx: Kensa, evaluated: int) -> None:
    with ctx.session() as s:
        project = repo.get_project_by_name(s, "widgets")
        batch = repo.get_batch_by_name(s, project.id, validation_batch_name(evaluated))
        bank = repo.get_active_bank_version(s, evaluated)
        repo.add_predictions(s, batch.id, [{
            "image_sha256": "f" * 64, "image_path": "/gone.png", "raw_score": 9.0,
            "verdict": "defect", "bank_version_id": bank.id,
        }])
    ev = load_evaluation(ctx, "widgets", evaluated)
    assert ev.unmatched == 1 and len(ev.images) == 8 and float(np.max(ev.scores)) == 0.9


def test_save_threshold_adds_a_row_and_keeps_history(ctx: Kensa, evaluated: int) -> None:
    row = save_threshold(ctx, "widgets", evaluated, 0.55)
    assert row["raw_value"] == 0.55 and row["active"]
    history = threshold_history(ctx, "widgets", evaluated)
    assert [(h["threshold"], h["active"], h["method"]) for h in history] == [
        (0.55, True, "manual"), (0.6, False, "f1_optimal")]
    assert load_evaluation(ctx, "widgets", evaluated).threshold == 0.55


def test_only_the_model_in_use_gets_a_threshold(ctx: Kensa, evaluated: int) -> None:
    newer = fake_training(ctx, "widgets", SCORES, threshold=0.7)
    versions = evaluable_versions(ctx, "widgets")
    assert [v["id"] for v in versions] == [newer, evaluated]
    assert versions[0]["active"] and "in use" in versions[0]["label"]
    with pytest.raises(ValueError, match="not the model in use"):
        save_threshold(ctx, "widgets", evaluated, 0.5)


def test_unknown_version_is_refused(ctx: Kensa, evaluated: int) -> None:
    with pytest.raises(NothingToEvaluate):
        load_evaluation(ctx, "widgets", evaluated + 100)


def test_heatmap_overlay_is_cached(ctx: Kensa, evaluated: int) -> None:
    ev = load_evaluation(ctx, "widgets", evaluated)
    item = ev.images[0]
    data = heatmap_overlay(ctx.home, item.path, item.heatmap_path)
    assert data[:3] == b"\xff\xd8\xff"
    assert len(list((ctx.home / "cache" / "heat").glob("*.jpg"))) == 1
    assert heatmap_overlay(ctx.home, item.path, item.heatmap_path) == data
    assert heatmap_overlay(ctx.home, item.path, None) is None
    assert heatmap_overlay(ctx.home, item.path, "/missing.png") is None


def test_review_band_of_separated_scores_names_its_edges(ctx: Kensa, make_project) -> None:
    make_project("clean", n_train=3, n_test_good=2, n_defect=2)
    scores = {"good_000.png": 0.1, "good_001.png": 0.3, "spot_000.png": 0.6, "spot_001.png": 0.9}
    band = review_band(load_evaluation(ctx, "clean", fake_training(ctx, "clean", scores)))
    assert (band["low"], band["high"], band["overlap"]) == (0.3, 0.6, False)
    assert band["low_is"] == "the highest good score"
    assert band["counts"]["review"] == {"images": 1, "good": 1, "defect": 0}

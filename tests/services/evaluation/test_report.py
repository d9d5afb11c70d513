"""services.evaluation.report on what a real tiny training stored: labels by sha256, counts,
worst errors, saving. The trained projects come from tests/trained.py (built once per session,
copied per test); expected values are computed from the stored scores, not hand-picked."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

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
from services.training.project import list_model_versions
from tests.trained import build_template, copy_home, stored_scores


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def ctx(trained_template: Path, tmp_path: Path) -> Iterator[Kensa]:
    """A copy of the trained template (SQLite only: these tests are about the report, the
    database dialects are covered by tests/db and the other service tests)."""
    home = copy_home(trained_template, tmp_path / "home")
    context = Kensa.create(home, f"sqlite:///{home / 'kensa.db'}")
    yield context
    context.close()


@pytest.fixture
def evaluated(ctx: Kensa) -> int:
    """The model version in use on "widgets" (4 good and 4 defect held-out images)."""
    return list_model_versions(ctx, "widgets")[0]["id"]


def _split(ctx: Kensa, mv: int) -> tuple[dict[str, float], dict[str, float]]:
    scores = stored_scores(ctx, "widgets", mv)
    goods = {n: v for n, (label, v) in scores.items() if label == "good"}
    defects = {n: v for n, (label, v) in scores.items() if label == "defect"}
    return goods, defects


def test_load_joins_labels_by_sha_and_reads_threshold(ctx: Kensa, evaluated: int) -> None:
    ev = load_evaluation(ctx, "widgets", evaluated)
    goods, defects = _split(ctx, evaluated)
    assert (ev.n_good, ev.n_defect) == (len(goods), len(defects)) == (4, 4)
    by_name = {r.name: (r.label, r.score) for r in ev.images}
    assert by_name == {**{n: (0, v) for n, v in goods.items()},
                       **{n: (1, v) for n, v in defects.items()}}
    stored = list_model_versions(ctx, "widgets")[0]["metrics"]
    assert ev.threshold == pytest.approx(stored["threshold"]["value"])
    assert ev.threshold_method == stored["threshold"]["method"]
    assert ev.is_active and ev.unmatched == 0
    assert ev.metrics[0]["value"] == f"{stored['image_auroc']:.3f}"
    lo, hi, step = ev.slider_scale()
    assert step > 0 and lo <= min(ev.scores) and max(ev.scores) <= hi
    assert lo <= ev.threshold <= hi


def test_counts_follow_the_threshold(ctx: Kensa, evaluated: int) -> None:
    ev = load_evaluation(ctx, "widgets", evaluated)
    goods, defects = _split(ctx, evaluated)
    for t in sorted({ev.threshold, *goods.values(), *defects.values()}):
        at = at_threshold(ev, t)
        fp = sum(v >= t for v in goods.values())
        tp = sum(v >= t for v in defects.values())
        assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (tp, fp, 4 - fp, 4 - tp), t
        assert at["missed_defects"] == pytest.approx((4 - tp) / 4)
        assert at["false_alarms"] == pytest.approx(fp / 4)
    high = at_threshold(ev, max(ev.scores) + 1)
    assert (high["tp"], high["fp"], high["precision"]) == (0, 0, None)


def test_worst_errors_come_first(ctx: Kensa, evaluated: int) -> None:
    ev = load_evaluation(ctx, "widgets", evaluated)
    goods, defects = _split(ctx, evaluated)
    # a threshold between the goods: the goods above it are false alarms, highest first
    t = float(np.median(list(goods.values())))
    fps, fns = worst_errors(ev, t)
    expected = sorted((n for n, v in goods.items() if v >= t), key=lambda n: -goods[n])
    assert [r.name for r in fps] == expected and len(expected) >= 2
    assert [r.name for r in fns] == sorted((n for n, v in defects.items() if v < t),
                                           key=lambda n: defects[n])
    # above every score: every defect is missed, lowest first, at most four shown
    fps, fns = worst_errors(ev, max(ev.scores) + 1)
    assert [r.name for r in fns] == sorted(defects, key=lambda n: defects[n])[:4]
    assert all(r.heatmap_path for r in fns)


def test_review_band_brackets_the_uncertain_scores(ctx: Kensa, evaluated: int) -> None:
    band = review_band(load_evaluation(ctx, "widgets", evaluated))
    goods, defects = _split(ctx, evaluated)
    top_good, low_defect = max(goods.values()), min(defects.values())
    overlap = top_good >= low_defect
    assert band["overlap"] == overlap
    assert (band["low"], band["high"]) == pytest.approx(
        (low_defect, top_good) if overlap else (top_good, low_defect))
    # Each edge score counts on its own side: separated, the highest good is "sure good" (it
    # used to fall in "review" while the caption said the scores do not overlap); overlapping,
    # both edges are in the reviewed overlap.
    everything = [*(("good", v) for v in goods.values()),
                  *(("defect", v) for v in defects.values())]
    lo, hi = band["low"], band["high"]
    if overlap:
        zones = (("good", lambda v: v < lo), ("review", lambda v: lo <= v <= hi),
                 ("defect", lambda v: v > hi))
    else:
        zones = (("good", lambda v: v <= lo), ("review", lambda v: lo < v < hi),
                 ("defect", lambda v: v >= hi))
    assert (band["counts"]["review"]["images"] == 0) == (not overlap)
    assert band["caption"].startswith("No evaluated image" if not overlap else
                                      f"{band['counts']['review']['images']} evaluated image")
    for zone, inside in zones:
        counts = band["counts"][zone]
        assert counts["good"] == sum(lab == "good" and inside(v) for lab, v in everything)
        assert counts["defect"] == sum(lab == "defect" and inside(v) for lab, v in everything)
        assert counts["images"] == counts["good"] + counts["defect"]


def test_curves_need_both_classes(ctx: Kensa) -> None:
    mv = list_model_versions(ctx, "goods")[0]["id"]
    ev = load_evaluation(ctx, "goods", mv)
    # "goods" has no defect images: its threshold was set on synthetic ones, shown as such
    assert ev.n_defect and all(r.defect_type.startswith("synthetic") for r in ev.images
                               if r.label == 1)
    good = ev.labels == 0  # without them, one class is left
    ev = replace(ev, images=[r for r in ev.images if r.label == 0], scores=ev.scores[good],
                 labels=ev.labels[good])
    assert not ev.has_both and roc_pr(ev) is None and review_band(ev) is None
    assert at_threshold(ev, ev.threshold)["missed_defects"] is None


def test_curves_are_computed(ctx: Kensa, evaluated: int) -> None:
    curve = roc_pr(load_evaluation(ctx, "widgets", evaluated))
    assert curve["roc"]["fpr"][0] == 0.0 and curve["roc"]["tpr"][-1] == 1.0
    assert len(curve["pr"]["precision"]) == len(curve["pr"]["thresholds"]) + 1


def test_prediction_of_a_removed_image_is_counted_not_guessed(ctx: Kensa, evaluated: int) -> None:
    top = max(load_evaluation(ctx, "widgets", evaluated).scores)
    with ctx.session() as s:
        project = repo.get_project_by_name(s, "widgets")
        batch = repo.get_batch_by_name(s, project.id, validation_batch_name(evaluated))
        bank = repo.get_active_state_version(s, evaluated)
        repo.add_predictions(s, batch.id, [{
            "image_sha256": "f" * 64, "image_path": "/gone.png", "raw_score": top + 9.0,
            "verdict": "defect", "state_version_id": bank.id,
        }])
    ev = load_evaluation(ctx, "widgets", evaluated)
    assert ev.unmatched == 1 and len(ev.images) == 8
    assert float(np.max(ev.scores)) == pytest.approx(top)


def test_save_threshold_adds_a_row_and_keeps_history(ctx: Kensa, evaluated: int) -> None:
    before = load_evaluation(ctx, "widgets", evaluated)
    value = round(float(np.median(before.scores)), 4)  # inside the sane range of the scores
    row = save_threshold(ctx, "widgets", evaluated, value)
    assert row["raw_value"] == value and row["active"]
    history = threshold_history(ctx, "widgets", evaluated)
    assert [(h["threshold"], h["active"], h["method"]) for h in history] == [
        (value, True, "manual"), (pytest.approx(before.threshold), False, before.threshold_method)]
    assert load_evaluation(ctx, "widgets", evaluated).threshold == value
    with pytest.raises(ValueError, match="outside the sane range"):
        save_threshold(ctx, "widgets", evaluated, 0.0)
    assert save_threshold(ctx, "widgets", evaluated, 0.0, confirm_extreme=True)["raw_value"] == 0


def test_only_the_model_in_use_gets_a_threshold(ctx: Kensa, evaluated: int) -> None:
    older = list_model_versions(ctx, "widgets")[-1]["id"]
    versions = evaluable_versions(ctx, "widgets")
    assert [v["id"] for v in versions] == [evaluated, older]
    assert versions[0]["active"] and "in use" in versions[0]["label"]
    with pytest.raises(ValueError, match="not the model in use"):
        save_threshold(ctx, "widgets", older, 0.5)


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

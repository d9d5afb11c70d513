"""The Evaluation page's honesty checks on hand-made scores: leave-one-out, review band
captions, the few-image warning and the threshold margin (every expected value worked out by
hand in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.thresholds import f1_optimal, f1_optimal_with_margin
from services.evaluation.report import (
    Evaluation,
    cross_validated,
    review_band,
    sample_warning,
)


def _ev(goods: list[float], defects: list[float]) -> Evaluation:
    scores = np.asarray(goods + defects, dtype=np.float64)
    labels = np.asarray([0] * len(goods) + [1] * len(defects), dtype=np.int64)
    return Evaluation("p", 1, True, [], [], scores, labels, None, None)


def test_threshold_margin_is_midway_when_the_classes_separate() -> None:
    result = f1_optimal_with_margin([0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1])
    assert f1_optimal([0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]).value == 0.5  # on a defect score
    assert result.value == pytest.approx(0.35) and result.method == "f1_optimal"
    assert result.params["plateau"] == [0.2, 0.5] and result.params["f1"] == 1.0


def test_leave_one_out_is_less_optimistic_than_in_sample() -> None:
    # In sample: threshold 0.4 is F1-best (tp 4, fp 1: F1 0.889), placed at 0.35.
    # Left out, defect 0.4 meets a threshold chosen at 0.475 on the rest (missed), good 0.45
    # meets 0.35 (false alarm); the others are called right: tp 3, fn 1, fp 1, tn 3, F1 0.75.
    ev = _ev([0.1, 0.2, 0.3, 0.45], [0.4, 0.5, 0.6, 0.7])
    honest = cross_validated(ev)
    assert (honest["tp"], honest["fn"], honest["fp"], honest["tn"]) == (3, 1, 1, 3)
    assert honest["f1"] == pytest.approx(0.75)
    assert honest["f1"] < f1_optimal(ev.scores, ev.labels).params["f1"]  # 0.889 in sample
    assert honest["missed_defects"] == 0.25 and honest["false_alarms"] == 0.25
    perfect = cross_validated(_ev([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]))
    assert perfect["f1"] == 1.0 and perfect["fp"] == perfect["fn"] == 0
    assert cross_validated(_ev([0.1], [0.5, 0.6])) is None  # nothing left to choose on


def test_review_band_caption_follows_its_counts() -> None:
    separated = review_band(_ev([0.1, 0.2, 0.3], [0.5, 0.6]))
    assert separated["counts"]["good"] == {"images": 3, "good": 3, "defect": 0}  # 0.3 included
    assert separated["counts"]["review"]["images"] == 0
    assert separated["caption"].startswith("No evaluated image falls in the review zone")
    overlap = review_band(_ev([0.1, 0.2, 0.55], [0.5, 0.6]))
    assert overlap["counts"]["review"] == {"images": 2, "good": 1, "defect": 1}
    assert overlap["caption"].startswith("2 evaluated image(s) fall in the review zone "
                                         "(1 good, 1 defect)")


def test_few_images_are_flagged_with_how_much_one_image_moves_auroc() -> None:
    text = sample_warning(_ev([0.1] * 4, [0.9] * 2))
    assert "only 6 held-out image(s) (4 good, 2 defect)" in text
    assert "by up to 0.50" in text  # one defect image is half of the (good, defect) pairs
    assert sample_warning(_ev([0.1] * 15, [0.9] * 5)) is None
    assert sample_warning(_ev([0.1] * 30, [0.9] * 4)) is not None  # too few defects

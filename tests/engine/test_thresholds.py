"""Threshold strategies, the review band and display normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from engine.thresholds import (
    ReviewBand,
    ThresholdResult,
    confidence,
    f1_optimal,
    manual,
    mean_k_sigma,
    normalize,
    percentile,
)


def test_f1_optimal_separable() -> None:
    scores = [0.1, 0.2, 0.3, 0.8, 0.9]
    res = f1_optimal(scores, [0, 0, 0, 1, 1])
    assert isinstance(res, ThresholdResult)
    assert res.method == "f1_optimal"
    assert res.value == pytest.approx(0.8)  # score >= 0.8 is a defect
    assert res.params["f1"] == pytest.approx(1.0)


def test_f1_optimal_hand_computed() -> None:
    # Sorted desc: 0.9(1) 0.7(0) 0.6(1) 0.4(1) 0.2(0), 3 defects.
    # t=0.9: P=1, R=1/3, F1=.5 ; t=0.7: P=.5, R=1/3, F1=.4 ; t=0.6: P=2/3, R=2/3, F1=2/3
    # t=0.4: P=3/4, R=1, F1=6/7 ; t=0.2: P=3/5, R=1, F1=.75  -> best t=0.4
    res = f1_optimal([0.9, 0.7, 0.6, 0.4, 0.2], [1, 0, 1, 1, 0])
    assert res.value == pytest.approx(0.4)
    assert res.params["f1"] == pytest.approx(6 / 7)
    assert res.params["precision"] == pytest.approx(0.75)
    assert res.params["recall"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([], [], "empty"),
        ([0.1, np.nan], [0, 1], "NaN"),
        ([0.1, 0.2], [0, 0], "both good .* and defect"),
        ([0.1, 0.2], [1, 1], "only defect"),
        ([0.1, 0.2], [0, 2], "0 .* or 1"),
        ([0.1, 0.2], [0], "2 scores but 1 labels"),
    ],
)
def test_f1_optimal_rejects_bad_input(scores: list, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        f1_optimal(scores, labels)


def test_mean_k_sigma() -> None:
    normal = [1.0, 2.0, 3.0, 4.0]
    res = mean_k_sigma(normal, k=2.0)
    std = np.std(normal, ddof=1)
    assert res.value == pytest.approx(2.5 + 2.0 * std)
    assert res.params == {"k": 2.0, "mean": 2.5, "std": pytest.approx(std), "n": 4}
    with pytest.raises(ValueError, match="need 2"):
        mean_k_sigma([1.0])
    with pytest.raises(ValueError, match="NaN"):
        mean_k_sigma([1.0, float("inf")])


def test_percentile() -> None:
    normal = np.arange(101, dtype=float)
    assert percentile(normal, 99.0).value == pytest.approx(99.0)
    assert percentile(normal, q=50).params["q"] == 50.0
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile(normal, 101)
    with pytest.raises(ValueError, match="empty"):
        percentile([], 99)


def test_manual() -> None:
    assert manual(1.5) == ThresholdResult("manual", 1.5, {})
    with pytest.raises(ValueError, match="finite"):
        manual(float("nan"))


def test_review_band_classify() -> None:
    band = ReviewBand(1.0, 2.0)
    out = band.classify([0.5, 1.0, 1.5, 2.0, 3.0])
    assert out.tolist() == ["good", "review", "review", "defect", "defect"]
    single = ReviewBand(1.0, 1.0)  # degenerate band == single threshold
    assert single.classify([0.99, 1.0]).tolist() == ["good", "defect"]
    with pytest.raises(ValueError, match="must not exceed"):
        ReviewBand(2.0, 1.0)


def test_review_band_constructors() -> None:
    assert ReviewBand.from_threshold(1.0, 0.25) == ReviewBand(0.75, 1.25)
    with pytest.raises(ValueError, match="margin"):
        ReviewBand.from_threshold(1.0, -0.1)
    # Overlap: defects start at 0.6, normals reach 0.7 -> review in [0.6, 0.7).
    overlap = ReviewBand.from_scores([0.1, 0.3, 0.7], [0.6, 0.9, 1.2])
    assert overlap == ReviewBand(0.6, 0.7)
    # Separated: the unseen gap between 0.3 and 0.8 is the review zone.
    gap = ReviewBand.from_scores([0.1, 0.3], [0.8, 0.9])
    assert gap == ReviewBand(0.3, 0.8)
    assert gap.classify([0.2, 0.5, 0.85]).tolist() == ["good", "review", "defect"]


def test_normalize_anchors_and_monotonic() -> None:
    normal = [1.0, 2.0, 3.0]  # median 2
    out = normalize([0.0, 2.0, 3.0, 4.0, 10.0], threshold=4.0, normal_scores=normal)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 0.5, 1.0])
    grid = normalize(np.linspace(-5, 15, 200), 4.0, normal)
    assert np.all(np.diff(grid) >= 0) and grid.min() >= 0 and grid.max() <= 1
    with pytest.raises(ValueError, match="above the median"):
        normalize([1.0], threshold=1.5, normal_scores=normal)


def test_confidence() -> None:
    normal = [0.0, 1.0, 2.0]  # sample std 1
    assert confidence(5.0, 5.0, normal) == pytest.approx(0.5)
    assert confidence(6.0, 5.0, normal) == pytest.approx(0.8413, abs=1e-4)
    assert confidence(4.0, 5.0, normal) == pytest.approx(0.8413, abs=1e-4)
    many = confidence(np.array([5.0, 8.0, 100.0]), 5.0, normal)
    assert isinstance(many, np.ndarray)
    assert np.all((many >= 0.5) & (many <= 1.0)) and np.all(np.diff(many) > 0)
    assert isinstance(confidence(5.0, 5.0, normal), float)


def test_normalize_keeps_a_float32_map_in_float32() -> None:
    """A full-size map of a large image is not copied to float64 (peak memory while scoring)."""
    from engine.thresholds import normalize

    score_map = np.linspace(0, 4, 64, dtype=np.float32).reshape(8, 8)
    out = normalize(score_map, 2.0, [0.5, 1.0, 1.5])
    assert out.dtype == np.float32
    assert out[0, 0] == 0.0 and out.max() == 1.0
    assert np.isclose(normalize(np.array([2.0]), 2.0, [0.5, 1.0, 1.5])[0], 0.5)

"""Image and pixel metrics against hand computations and reference implementations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from engine.metrics import confusion_at, curves, image_metrics, pixel_metrics

SCORES = [0.9, 0.7, 0.6, 0.4, 0.2]
LABELS = [1, 0, 1, 1, 0]


def test_image_metrics_perfect_and_reversed() -> None:
    perfect = image_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert perfect["image_auroc"] == pytest.approx(1.0)
    assert perfect["image_ap"] == pytest.approx(1.0)
    assert perfect["image_f1"] == pytest.approx(1.0)
    assert perfect["threshold"] == pytest.approx(0.8)
    reversed_ = image_metrics([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert reversed_["image_auroc"] == pytest.approx(0.0)


def test_image_metrics_hand_computed() -> None:
    m = image_metrics(SCORES, LABELS)
    # 4 of 6 (defect, good) pairs are ordered correctly.
    assert m["image_auroc"] == pytest.approx(4 / 6)
    # AP = sum (R_n - R_n-1) P_n = 1/3*1 + 1/3*2/3 + 1/3*3/4
    assert m["image_ap"] == pytest.approx(29 / 36)
    assert m["image_f1"] == pytest.approx(6 / 7)
    assert m["threshold"] == pytest.approx(0.4)


def test_image_metrics_large_raw_scores_are_not_squashed() -> None:
    # torchmetrics would sigmoid these into ties (all 1.0) without our min-max scaling.
    m = image_metrics([100.0, 200.0, 300.0, 400.0], [0, 0, 1, 1])
    assert m["image_auroc"] == pytest.approx(1.0)
    assert m["image_ap"] == pytest.approx(1.0)


def test_single_class_is_rejected() -> None:
    with pytest.raises(ValueError, match="AUROC needs both good .* and defect"):
        image_metrics([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        image_metrics([0.1, float("nan")], [0, 1])


def test_curves_are_json_friendly() -> None:
    c = curves(SCORES, LABELS)
    json.dumps(c, allow_nan=False)
    roc, pr = c["roc"], c["pr"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert roc["thresholds"][0] > max(SCORES)
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"]) + 1


def test_confusion_at() -> None:
    assert confusion_at(SCORES, LABELS, 0.6) == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}
    assert confusion_at(SCORES, LABELS, 0.0) == {"tp": 3, "fp": 2, "tn": 0, "fn": 0}
    assert confusion_at([0.5], [0], 0.5) == {"tp": 0, "fp": 1, "tn": 0, "fn": 0}


# --------------------------------------------------------------------------- pixel level


def _square_masks(n: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray | None]:
    masks: list[np.ndarray | None] = []
    for i in range(n):
        if i % 3 == 0:
            masks.append(None)  # good image
            continue
        m = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        m[y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = True
        if i % 2:  # a second, disjoint region of very different size
            m[0:2, 0:20] = True
        masks.append(m)
    return masks


def test_pixel_metrics_map_equal_to_mask_is_perfect() -> None:
    rng = np.random.default_rng(0)
    masks = _square_masks(6, 30, 40, rng)
    maps = [np.zeros((30, 40), np.float32) if m is None else m.astype(np.float32) for m in masks]
    out = pixel_metrics(maps, masks)
    assert out["pixel_auroc"] == pytest.approx(1.0)
    assert out["aupro"] == pytest.approx(1.0)


def test_pixel_metrics_random_map_is_low() -> None:
    rng = np.random.default_rng(1)
    masks = _square_masks(9, 40, 50, rng)
    maps = [rng.random((40, 50), dtype=np.float32) for _ in masks]
    out = pixel_metrics(maps, masks)
    assert out["pixel_auroc"] == pytest.approx(0.5, abs=0.1)
    assert out["aupro"] < 0.25  # chance level is 0.15 for max_fpr = 0.3


def test_pixel_metrics_match_sklearn_and_anomalib() -> None:
    """The binned streaming computation agrees with exact reference implementations."""
    from anomalib.metrics.aupro import _AUPRO

    rng = np.random.default_rng(2)
    masks = _square_masks(8, 32, 32, rng)
    full = [np.zeros((32, 32), bool) if m is None else m for m in masks]
    maps = [rng.random((32, 32), dtype=np.float32) + 0.8 * m for m in full]
    out = pixel_metrics(maps, masks)

    exact_auroc = roc_auc_score(np.stack(full).ravel(), np.stack(maps).ravel())
    assert out["pixel_auroc"] == pytest.approx(exact_auroc, abs=1e-4)

    ref = _AUPRO(fpr_limit=0.3)
    ref.update(torch.from_numpy(np.stack(maps)), torch.from_numpy(np.stack(full)).float())
    assert out["aupro"] == pytest.approx(float(ref.compute()), abs=1e-3)
    assert 0.3 < out["aupro"] < 0.99  # a non-trivial case


def test_pixel_metrics_sizes_may_differ_per_image() -> None:
    small = np.zeros((10, 20), bool)
    small[2:5, 3:9] = True
    big = np.zeros((40, 30), bool)
    big[10:20, 5:15] = True
    maps = [small.astype(np.float32), big.astype(np.float32)[None], np.zeros((15, 15))]
    out = pixel_metrics(maps, [small, big, None])
    assert out["pixel_auroc"] == pytest.approx(1.0) and out["aupro"] == pytest.approx(1.0)
    assert out["n_regions"] == 2 and out["n_pixels"] == 200 + 1200 + 225
    # A map at a different size than its mask is resized to the mask.
    half = np.kron(big.astype(np.float32), np.ones((1, 1)))[::2, ::2]
    assert pixel_metrics([half], [big])["pixel_auroc"] > 0.95


def test_pixel_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="defect pixels"):
        pixel_metrics([np.zeros((4, 4))], [None])
    with pytest.raises(ValueError, match="2 anomaly maps but 1 masks"):
        pixel_metrics([np.zeros((4, 4))] * 2, [None])
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics([np.full((4, 4), np.nan)], [np.ones((4, 4))])
    with pytest.raises(ValueError, match="background pixels"):
        pixel_metrics([np.zeros((4, 4))], [np.ones((4, 4))])

"""Connected regions of an anomaly map above a threshold: what an inspector wants boxed."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np


class Region(NamedTuple):
    """One anomalous blob in original-image pixels."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float
    mean: float

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else int(v))
                for k, v in self._asdict().items()}


def find_regions(score_map: np.ndarray, threshold: float, min_area: int = 16,
                 max_regions: int = 20) -> list[Region]:
    """Blobs where ``score_map >= threshold``, largest peak first; tiny specks are ignored."""
    return label_regions(score_map, threshold, min_area, max_regions)[0]


def label_regions(score_map: np.ndarray, threshold: float, min_area: int = 16,
                  max_regions: int = 20) -> tuple[list[Region], np.ndarray, list[int]]:
    """:func:`find_regions` plus the label image and each region's label in it.

    Explanations need each blob's pixels (contours, shape measurements), not only its box;
    one function keeps both callers on exactly the same blobs.
    """
    if score_map.ndim != 2:
        raise ValueError(f"expected a 2-D anomaly map, got shape {score_map.shape}")
    binary = (score_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    found: list[tuple[Region, int]] = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        values = score_map[labels == label]
        found.append((Region(x, y, w, h, area, float(values.max()), float(values.mean())),
                      label))
    found.sort(key=lambda item: item[0].peak, reverse=True)
    found = found[:max_regions]
    return [r for r, _ in found], labels, [label for _, label in found]

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
    if score_map.ndim != 2:
        raise ValueError(f"expected a 2-D anomaly map, got shape {score_map.shape}")
    binary = (score_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions: list[Region] = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        values = score_map[labels == label]
        regions.append(Region(x, y, w, h, area, float(values.max()), float(values.mean())))
    regions.sort(key=lambda r: r.peak, reverse=True)
    return regions[:max_regions]

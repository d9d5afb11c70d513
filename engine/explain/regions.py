"""Regions of an anomaly map with the shape measurements behind a defect-kind guess.

Kinds, from the blob's second moments (an ellipse of the same spread):

* ``line`` (scratch, crack): elongation = major / minor axis >= :data:`LINE_ELONGATION`;
* ``spot`` (pit, dent, blowhole): not elongated and its major axis spans at most
  :data:`SPOT_SPAN` of the image's longer side;
* ``area`` (stain, uneven shading): anything larger.

The map is smoothed (the detector blurs it and each patch sees its neighbours), so a blob is
wider than the defect; moments are still a fair measure of its shape, and the measurements are
returned with the kind so a person can see why it was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.regions import Region, label_regions

#: Major / minor axis ratio from which a blob counts as a line or scratch.
LINE_ELONGATION = 2.5
#: Largest major axis of a spot, as a fraction of the image's longer side.
SPOT_SPAN = 0.25
#: Regions smaller than this many pixels are specks of the smoothing, not findings.
MIN_AREA = 16


@dataclass
class ShapedRegion:
    """A :class:`Region` with its pixels (``mask`` over the box), contours and kind."""

    region: Region
    mask: np.ndarray
    contours: list[np.ndarray]
    kind: str
    measurements: dict[str, float]

    @property
    def box(self) -> tuple[int, int, int, int]:
        r = self.region
        return (r.x, r.y, r.x + r.width, r.y + r.height)


def measure(mask: np.ndarray, image_shape: tuple[int, int]) -> dict[str, float]:
    """Shape measurements of one blob (``mask`` bool, any crop of it) in an image of
    ``image_shape`` (height, width)."""
    m = mask.astype(np.uint8)
    area = float(m.sum())
    if area == 0:
        raise ValueError("an empty region has no shape")
    moments = cv2.moments(m, binaryImage=True)
    mu20, mu02, mu11 = (moments[k] / moments["m00"] for k in ("mu20", "mu02", "mu11"))
    common = np.sqrt(((mu20 - mu02) / 2) ** 2 + mu11 ** 2)
    major_var = (mu20 + mu02) / 2 + common
    minor_var = max((mu20 + mu02) / 2 - common, 1.0 / 12.0)  # a 1-px line still has width
    length = 4.0 * np.sqrt(major_var)  # full axes of the ellipse with the same moments
    width = 4.0 * np.sqrt(minor_var)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours)) if contours else None
    hull_area = float(cv2.contourArea(hull)) if hull is not None else 0.0
    ys, xs = np.nonzero(m)
    box_area = float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return {
        "elongation": float(length / width),
        "length_px": float(length),
        "width_px": float(width),
        "solidity": float(min(1.0, area / hull_area)) if hull_area > 0 else 1.0,
        "extent": float(area / box_area),
        "span": float(length / max(image_shape)),
        "area_pct": float(100.0 * area / (image_shape[0] * image_shape[1])),
    }


def classify(measurements: dict[str, float]) -> str:
    """``line``, ``spot`` or ``area`` from :func:`measure`'s numbers (rules in the module doc)."""
    if measurements["elongation"] >= LINE_ELONGATION:
        return "line"
    if measurements["span"] <= SPOT_SPAN:
        return "spot"
    return "area"


def shaped_regions(score_map: np.ndarray, threshold: float, *, typical: float | None = None,
                   min_area: int = MIN_AREA, max_regions: int = 20, defect: bool = False
                   ) -> list[ShapedRegion]:
    """Blobs of ``score_map >= threshold``, highest peak first, with shape and kind.

    A blob's outline is drawn at HALF ITS HEIGHT above ``typical`` (the median held-out good
    score) when that lies above the threshold: the map is smoothed and every patch vector sees
    its neighbourhood, so a strong defect raises the map well beyond its own pixels, and a box
    at the threshold would frame those surroundings too (a 10 px spot gave a 80 px box).
    The half-height outline (the full width at half maximum of a blurred point) keeps the box
    on the defect; a weak blob, whose half height is below the threshold, keeps its
    threshold outline. Without ``typical`` outlines are at the threshold.

    With ``defect`` (the verdict says defect) at least one region is returned: the image score
    is the maximum of the map at the working size and the map is resized afterwards, so the
    pixels at or above the threshold may form only a speck under ``min_area``; the verdict
    still deserves a place on the image.
    """
    regions, labels, ids = label_regions(score_map, threshold, min_area, max_regions)
    if not regions and defect:
        regions, labels, ids = label_regions(score_map, min(threshold, float(score_map.max())),
                                             1, max_regions)
    out = []
    for region, label in zip(regions, ids, strict=True):
        x, y, w, h = region.x, region.y, region.width, region.height
        blob = labels[y:y + h, x:x + w] == label
        values = score_map[y:y + h, x:x + w]
        if typical is not None and typical + 0.5 * (region.peak - typical) > threshold:
            level = typical + 0.5 * (region.peak - typical)
            core = blob & (values >= level)
            count, parts = cv2.connectedComponents(core.astype(np.uint8), connectivity=8)
            peak_part = parts[np.unravel_index(np.argmax(np.where(core, values, -np.inf)),
                                               core.shape)]
            blob = parts == peak_part  # the part holding the peak (others are lower shoulders)
            ys, xs = np.nonzero(blob)
            x, y = x + int(xs.min()), y + int(ys.min())
            blob = blob[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            h, w = blob.shape
            inside = score_map[y:y + h, x:x + w][blob]
            region = Region(x, y, w, h, int(blob.sum()), float(inside.max()),
                            float(inside.mean()))
        contours, _ = cv2.findContours(blob.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
        measurements = measure(blob, score_map.shape[:2])
        out.append(ShapedRegion(region, blob, list(contours), classify(measurements),
                                measurements))
    return out

"""Image-quality signals that tell a camera or lighting change apart from a process change.

Three numbers per image on a downscaled grey copy (long side ``QUALITY_SIDE`` px, so a
12-megapixel image costs the same as a thumbnail and the numbers do not depend on the
camera's resolution): brightness = mean grey level, contrast = standard deviation of the grey
levels, sharpness = variance of the Laplacian (the usual focus measure: blur removes the high
frequencies it responds to). If the anomaly scores move while these stay put, the parts
changed; if these move too, look at the camera and the lights first.

Each number is taken per tile of a ``TILES`` x ``TILES`` grid and the image's value is the
MEDIAN over the tiles. Light, exposure and focus act on the whole picture and move every
tile; a defect is local (a dark blob raises the contrast and the Laplacian of the two or three
tiles it covers) and leaves the median where it was. Without this, a lot full of defects
reads as "contrast rose 14 %: check the lighting", the very confusion these signals exist to
avoid.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

QUALITY_SIDE = 256
TILES = 4
SIGNALS = ("brightness", "contrast", "sharpness")


@dataclass(frozen=True)
class Quality:
    brightness: float
    contrast: float
    sharpness: float

    def as_list(self) -> list[float]:
        return [self.brightness, self.contrast, self.sharpness]


def image_quality(image: np.ndarray, side: int = QUALITY_SIDE) -> Quality:
    """Brightness, contrast and sharpness of an RGB (or grey) uint8 image (tile medians)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    grey = grey.astype(np.float64)
    lap = cv2.Laplacian(grey, cv2.CV_64F)
    rows = np.array_split(np.arange(grey.shape[0]), min(TILES, grey.shape[0]))
    cols = np.array_split(np.arange(grey.shape[1]), min(TILES, grey.shape[1]))
    tiles = [(r[0], r[-1] + 1, c[0], c[-1] + 1) for r in rows for c in cols]
    values = np.array([(grey[a:b, c:d].mean(), grey[a:b, c:d].std(), lap[a:b, c:d].var())
                       for a, b, c, d in tiles])
    brightness, contrast, sharpness = np.median(values, axis=0)
    return Quality(float(brightness), float(contrast), float(sharpness))

"""Small image operations shared by the gallery, the evaluation overlays and training reports.

Kept in the engine (numpy and OpenCV only, no torch) so the Streamlit server can use them without
loading a model.
"""

from __future__ import annotations

import cv2
import numpy as np


def shrink_to_fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled down so its long side is at most ``side``, aspect kept; never enlarged.

    Area averaging: pictures and score maps shrink without aliasing.
    """
    return _shrink(image, side, cv2.INTER_AREA)


def shrink_labels_to_fit(labels: np.ndarray, side: int) -> np.ndarray:
    """Like :func:`shrink_to_fit` for masks: nearest-neighbour, so a binary mask stays binary."""
    return _shrink(labels, side, cv2.INTER_NEAREST)


def _shrink(array: np.ndarray, side: int, interpolation: int) -> np.ndarray:
    h, w = array.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=interpolation)

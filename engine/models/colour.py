"""Does colour tell good from bad here? Measured on the good shots, decided once per bank.

Some products come in several colours that are all good (toothbrushes, caps, cable sleeves): with
a few shots the bank has seen one or two of them, and every part of another colour lights up
everywhere. When the shots themselves disagree on colour, colour is evidently not what makes a
part good, so the detector reads brightness only (a grey image in all three channels). When the
shots agree, or are grey, or there is only one shot, colour stays: a discoloured part is a defect.

The test is a hue histogram of each shot's colourful pixels (saturation and value high enough
that hue means something), compared shot against shot by total variation distance (0: same hues,
1: no hue in common). Shots of one product under one light differ by a few hundredths; toothbrush
heads of two colours by about 1 (``bench/quality_search.py``, issue 13's note).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Literal

import cv2
import numpy as np
from torch import Tensor

ColourMode = Literal["auto", "rgb", "gray"]

#: a shot whose colourful pixels are fewer than this share has no hue worth comparing
MIN_CHROMATIC_SHARE = 0.01
#: total variation distance between two shots' hue histograms above which colour varies
HUE_DISTANCE = 0.5
#: HSV thresholds (OpenCV's 0..255 scales) for a pixel whose hue is meaningful
MIN_SATURATION = 64
MIN_VALUE = 50
HUE_BINS = 18
_SIDE = 256  # hue statistics need no detail; a fixed small size keeps the test cheap


def hue_histogram(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Normalised hue histogram of the colourful pixels of an RGB uint8 image, and their share."""
    small = cv2.resize(image, (_SIDE, _SIDE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    colourful = (hsv[..., 1] > MIN_SATURATION) & (hsv[..., 2] > MIN_VALUE)
    hist = np.histogram(hsv[..., 0][colourful], bins=HUE_BINS, range=(0, 180))[0]
    total = hist.sum()
    return (hist / total if total else hist.astype(np.float64)), float(colourful.mean())


def hue_spread(images: Sequence[np.ndarray]) -> float:
    """Largest hue-histogram distance between two colourful shots (0 with fewer than two)."""
    hists = [h for h, share in map(hue_histogram, images) if share >= MIN_CHROMATIC_SHARE]
    return max((0.5 * float(np.abs(a - b).sum()) for a, b in combinations(hists, 2)),
               default=0.0)


def reads_gray(mode: ColourMode, shots: Sequence[np.ndarray]) -> bool:
    """Whether a bank built from ``shots`` should compare brightness only."""
    if mode == "gray":
        return True
    if mode == "rgb":
        return False
    if mode != "auto":
        raise ValueError(f"colour must be auto, rgb or gray, not {mode!r}")
    return hue_spread(shots) > HUE_DISTANCE


def to_gray(tensor: Tensor) -> Tensor:
    """[B,3,H,W] RGB in [0,1] -> the same shape, luma (ITU-R BT.601) in every channel."""
    weights = tensor.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (tensor * weights).sum(dim=1, keepdim=True).expand_as(tensor).contiguous()

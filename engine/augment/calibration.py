"""Synthetic defects for setting a threshold when no defect image was held out.

Without defects the only rule left is "well above the good scores" (mean + 3 sigma), whose
margin depends on how many good images were held out and says nothing about how far a defect
lands. Painting defects into held-out good images gives the F1 rule a defect class to place the
threshold against: midway between the highest good score and the lowest synthetic one.

The severity is deliberately moderate (0.5 to 2 % of the image, contrast 0.5): large, stark
defects would all score far above the goods and the mid-plateau threshold would land high,
missing the faint real defects a line cares about; tiny, faint ones would overlap the goods and
pull the threshold into them (false alarms). Kinds cycle through Perlin stains, cut-and-paste
patches and thin scars, so no single look decides the threshold; "seamless" needs a donor image
and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.augment.synthetic import FlatImageError, SyntheticDefect, inject
from engine.explain.overlay import encode_png

#: Kinds painted, in turn (entry n gets ``CALIBRATION_KINDS[n % 3]``).
CALIBRATION_KINDS: tuple[str, ...] = ("perlin", "cutpaste", "scar")
#: Fraction of the image's pixels a calibration defect covers (uniform in this range).
AREA_RANGE: tuple[float, float] = (0.005, 0.02)
#: How far the painted pixels move toward the image's own extremes (0 none, 1 full).
CONTRAST = 0.5


def synthetic_defect_set(goods: Sequence[np.ndarray], seed: int, per_image: int = 1,
                         first: int = 0) -> list[tuple[SyntheticDefect, str]]:
    """``per_image`` synthetic defects painted into each good image, with the kind used.

    Entry ``j`` comes from ``goods[j // per_image]``. Entry number ``n = first + j`` gets the
    kind ``CALIBRATION_KINDS[n % 3]`` and its own generator seeded ``(seed, n)``, so calling
    this once for all images or once per image with ``first`` advanced gives the same defects
    (a training paints them while it streams through the held-out images). An image with no
    contrast to paint with (flat) yields its copy with an empty mask: the caller drops those.
    """
    if per_image < 1:
        raise ValueError(f"per_image must be at least 1, got {per_image}")
    out: list[tuple[SyntheticDefect, str]] = []
    for i, image in enumerate(goods):
        for k in range(per_image):
            n = first + i * per_image + k
            kind = CALIBRATION_KINDS[n % len(CALIBRATION_KINDS)]
            rng = np.random.default_rng([seed, n])
            area = float(rng.uniform(*AREA_RANGE))
            try:
                defect = inject(image, kind, rng, area=area, contrast=CONTRAST)
            except FlatImageError:  # nothing to paint with (a single-colour image)
                defect = SyntheticDefect(image.copy(), np.zeros(image.shape[:2], dtype=bool))
            out.append((defect, kind))
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of an RGB uint8 image, or of a 2-D mask (nonzero written as 255).

    Lossless, so the file decodes to exactly the pixels that were scored and its sha256 names
    them. The encoding is the explain package's (:func:`engine.explain.overlay.encode_png`).
    """
    if image.ndim == 2:
        image = np.where(image > 0, 255, 0).astype(np.uint8)
    return encode_png(np.ascontiguousarray(image))

"""Feature view: what each backbone stage responds to, drawn over the image.

The backbone's activations have no absolute unit (ImageNet features, not anomaly scores), so
each stage is scaled by its own 1st..99th percentile of THIS image: the picture shows where a
stage responds most within the image, not how strongly compared with other images. The
anomaly map, not these, is on the fixed threshold scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from engine.explain.overlay import colorize

#: What the stages of a PatchCore backbone are for, by position (first = finest).
STAGE_ROLES = ("fine detail: edges and texture", "context: larger structures")


def stage_label(index: int, layer: str, stride: int, channels: int) -> str:
    role = STAGE_ROLES[index] if index < len(STAGE_ROLES) else "deeper stage"
    return (f"Stage {index + 1} ({role}; layer {layer}, one value per {stride} px, "
            f"{channels} channels)")


def activation_pictures(image: np.ndarray, stages: Sequence[tuple[str, int, int, np.ndarray]],
                        alpha: float = 0.6, colormap: str = "viridis"
                        ) -> list[tuple[str, np.ndarray]]:
    """(label in words, RGB uint8 picture) per stage from ``stage_activations`` output."""
    h, w = image.shape[:2]
    out = []
    for i, (layer, stride, channels, act) in enumerate(stages):
        lo, hi = np.percentile(act, [1, 99])
        scaled = np.clip((act - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)
        big = cv2.resize(scaled, (w, h), interpolation=cv2.INTER_LINEAR)
        picture = cv2.addWeighted(image, 1 - alpha, colorize(big, colormap), alpha, 0)
        out.append((stage_label(i, layer, stride, channels), picture))
    return out

"""Image -> tensor conversion shared by the models.

Resizing keeps the aspect ratio: industrial parts are often long and thin, and squashing them
to a square distorts the very textures the memory bank compares.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

#: Feature-grid stride of the stride-8 stage; input sides are rounded to a multiple of it.
GRID_STRIDE = 8


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Aspect-preserving size whose longer side is ``long_side``, sides multiples of 8 (>= 32)."""
    scale = long_side / max(height, width)

    def snap(side: int) -> int:
        return max(32, int(round(side * scale / GRID_STRIDE)) * GRID_STRIDE)

    return snap(height), snap(width)


def to_tensor(image: np.ndarray, long_side: int) -> torch.Tensor:
    """RGB uint8 H x W x 3 -> float [1,3,h,w] in [0,1] at the aspect-preserving working size."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image H x W x 3, got shape {image.shape} dtype {image.dtype}"
        )
    h, w = resized_shape(image.shape[0], image.shape[1], long_side)
    shrinking = h * w < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (w, h), interpolation=interpolation)
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float() / 255.0


def resize_map(score_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bring an anomaly map back to the original image size (bilinear)."""
    return cv2.resize(score_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)

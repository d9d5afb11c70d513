"""Small generated images for tests: a textured 'part' and the same part with drawn defects.

Real-looking enough for ImageNet features (oriented stripes plus grain, like machined metal)
while costing milliseconds to make; every test builds its own data, none reads shared/.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def texture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A good part: brushed stripes at a slightly random phase plus fine grain, RGB uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    base = 128 + 40 * np.sin(xx / 3.0 + phase) + 15 * np.sin(yy / 7.0 + phase / 2)
    grain = rng.normal(0, 6, (size, size))
    gray = np.clip(base + grain, 0, 255).astype(np.uint8)
    tint = np.stack([gray, (gray * 0.95).astype(np.uint8), (gray * 0.9).astype(np.uint8)], -1)
    return tint


def coloured_part(rng: np.random.Generator, hue: int, size: int = 96) -> np.ndarray:
    """A part on a dark background with a strongly coloured head of the given OpenCV hue."""
    image = np.full((size, size, 3), 20, np.uint8)
    side = size * 5 // 12
    hsv = np.zeros((side, side, 3), np.uint8)
    hsv[..., 0], hsv[..., 1], hsv[..., 2] = hue, 200, 90 + rng.integers(0, 60, (side, side))
    top = (size - side) // 2
    image[top:top + side, top:top + side] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return image


def with_defect(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw a dark blob or a bright scratch; returns (image, mask bool)."""
    out = image.copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    size = image.shape[0]
    cx, cy = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
    if rng.random() < 0.5:
        radius = int(rng.integers(size // 12, size // 7))
        cv2.circle(mask, (cx, cy), radius, 1, -1)
        out[mask > 0] = (20, 20, 25)
    else:
        dx, dy = (int(v) for v in rng.integers(-size // 3, size // 3, 2))
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 1, max(2, size // 24))
        out[mask > 0] = (250, 240, 200)
    return out, mask.astype(bool)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), data):
        raise OSError(f"could not write {path}")
    return path


def make_mvtec(root: Path, n_train: int = 6, n_test_good: int = 4, n_defect: int = 4,
               size: int = 96, seed: int = 0) -> Path:
    """A tiny MVTec-layout dataset with masks, e.g. for end-to-end training tests."""
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        write_png(root / "train" / "good" / f"good_{i:03d}.png", texture(rng, size))
    for i in range(n_test_good):
        write_png(root / "test" / "good" / f"good_{i:03d}.png", texture(rng, size))
    for i in range(n_defect):
        image, mask = with_defect(rng, texture(rng, size))
        write_png(root / "test" / "spot" / f"spot_{i:03d}.png", image)
        write_png(root / "ground_truth" / "spot" / f"spot_{i:03d}_mask.png",
                  mask.astype(np.uint8) * 255)
    return root


def lighting_shift(image: np.ndarray, strength: float = 1.5, centre: tuple[int, int] = (30, 30),
                   radius: float | None = None) -> np.ndarray:
    """The same part under a lamp that moved: a Gaussian hot spot brightening one area.

    A uniform brightness or contrast change barely moves the scores of an ImageNet-feature
    model (its features are built to ignore exposure); a hot spot changes local texture and
    does raise them, which is what a real lighting change on a line does.
    """
    size = image.shape[0]
    sigma = radius if radius is not None else size / 4.8
    yy, xx = np.mgrid[0:size, 0:image.shape[1]].astype(np.float32)
    gain = 1.0 + strength * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2)
                                   / (2 * sigma ** 2))
    shifted = image.astype(np.float32) * (gain[..., None] if image.ndim == 3 else gain)
    return np.clip(shifted, 0, 255).astype(np.uint8)

"""Heatmap overlays on ONE fixed colour scale, anchored on the threshold.

The map is first normalized by the decision rule (``ThresholdInfo.normalized``: 0 = the median
held-out good score, 0.5 = the threshold, 1 = twice as far above the median as the threshold),
then coloured with a fixed colormap over [0, 1]. Per-image min-max scaling would paint the
hottest pixel of a perfectly good part red; on this scale the same colour means the same
evidence in every image, and the threshold sits at the middle of the colormap.

anomalib 2.7's ``anomalib.visualization`` is not used: its ``apply_colormap`` knows only "jet",
``overlay_images`` round-trips through PIL, and importing it costs about 6 s and 400 MB on top
of torch (measured here), all for a blend that is two OpenCV calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Colormaps offered to people, by name, as OpenCV constants (applied to 8-bit values).
COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "cividis": cv2.COLORMAP_CIVIDIS,
}
CONTOUR_RGB = (255, 255, 255)
BOX_RGB = (255, 0, 255)


def colorize(normalized: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """RGB uint8 of a map already on the [0, 1] threshold scale (values outside are clipped)."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; known: {', '.join(COLORMAPS)}")
    values = np.round(np.clip(np.nan_to_num(normalized, nan=0.0), 0.0, 1.0) * 255)
    bgr = cv2.applyColorMap(values.astype(np.uint8), COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def line_width(shape: tuple[int, ...]) -> int:
    """Contour and box lines that stay visible on large images without hiding small ones."""
    return max(1, round(min(shape[:2]) / 250))


def overlay(
    image: np.ndarray,
    normalized: np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    contours: Sequence[Sequence[np.ndarray]] = (),
    boxes: Sequence[tuple[int, int, int, int]] = (),
) -> np.ndarray:
    """The image under its coloured map; region contours in white, boxes (x0, y0, x1, y1,
    exclusive ends) in magenta numbered from 1, colours no colormap here uses for its range."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if image.shape[:2] != normalized.shape[:2]:
        raise ValueError(f"map {normalized.shape} does not match image {image.shape}")
    heat = colorize(normalized, colormap)
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    width = line_width(image.shape)
    for region_contours in contours:
        cv2.drawContours(out, list(region_contours), -1, CONTOUR_RGB, width)
    for number, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), BOX_RGB, width)
        scale = max(0.35, min(image.shape[:2]) / 600)
        cv2.putText(out, str(number), (x0 + 2, max(y0 - 3, int(12 * scale + 2))),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, BOX_RGB, max(1, width), cv2.LINE_AA)
    return out


def legend(colormap: str = "jet", width: int = 480, height: int = 72) -> np.ndarray:
    """The colour scale as an RGB picture: bar over [0, 1], ticks at typical good (0),
    threshold (0.5) and twice the threshold's distance (1)."""
    bar_h = height // 2
    ramp = np.tile(np.linspace(0.0, 1.0, width - 20, dtype=np.float32), (bar_h, 1))
    out = np.full((height, width, 3), 255, np.uint8)
    out[4:4 + bar_h, 10:width - 10] = colorize(ramp, colormap)
    ticks = ((0.0, "typical good", 0), (0.5, "threshold", 1), (1.0, "2x past it", 2))
    for value, text, align in ticks:
        x = 10 + round(value * (width - 21))
        cv2.line(out, (x, 2), (x, 8 + bar_h), (0, 0, 0), 2 if value == 0.5 else 1)
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        tx = x if align == 0 else (x - tw // 2 if align == 1 else x - tw)
        cv2.putText(out, text, (max(0, tx), height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB (or single-channel) uint8 array."""
    data = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", data)
    if not ok:
        raise RuntimeError("could not encode the picture as PNG")
    return encoded.tobytes()

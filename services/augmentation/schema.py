"""What the Augmentation page needs from the engine's schema, and the mask overlay it draws.

Pages import services only (the layers go one way), yet the page draws its widgets from the
engine's schema (one widget per ``ParamSpec``, like albumentations-demo) so that a transform
added to ``engine.augment.TRANSFORMS`` appears on the page without touching the page. This
module is that narrow door: the schema names re-exported, the transforms grouped under plain
titles, and the overlay that shows a mask on an image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.augment import (
    TRANSFORMS,
    AugmentConfig,
    AugmentConfigError,
    ParamSpec,
    TransformSpec,
    default_step,
    validate_config,
)
from services.data.gallery import overlay_mask

__all__ = [
    "GROUP_TITLES",
    "TRANSFORMS",
    "AugmentConfig",
    "AugmentConfigError",
    "ParamSpec",
    "TransformSpec",
    "default_step",
    "describe_applied",
    "groups",
    "overlay",
    "validate_config",
]

#: The transform groups in the order a user thinks of them, with the words the page shows.
GROUP_TITLES: dict[str, str] = {
    "geometric": "Position and shape",
    "light": "Light and colour",
    "camera": "Camera effects",
    "synthetic": "Synthetic defects",
}


def groups() -> list[tuple[str, str, list[TransformSpec]]]:
    """``(group, plain title, transforms)`` for every group that has transforms, in the
    order of GROUP_TITLES, transforms in TRANSFORMS' display order. A group the engine adds
    later still shows (last, under its own name) rather than silently disappearing."""
    by_group: dict[str, list[TransformSpec]] = {}
    for spec in TRANSFORMS.values():
        by_group.setdefault(spec.group, []).append(spec)
    order = [*GROUP_TITLES, *(g for g in by_group if g not in GROUP_TITLES)]
    return [(g, GROUP_TITLES.get(g, g.capitalize()), by_group[g]) for g in order if g in by_group]


def overlay(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``image`` as RGB uint8 with ``mask`` tinted and outlined (the gallery's style, so a
    defect looks the same on every page). No mask, or an empty one, gives the image as is.

    A mask of another size than the image (never expected: the engine moves masks with the
    pixels) is refused with both sizes named rather than drawn in the wrong place.
    """
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    if rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8) if rgb.dtype == np.uint8 else _to_uint8(rgb)
    if mask is None:
        return rgb
    if mask.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px but the image is "
                         f"{rgb.shape[1]}x{rgb.shape[0]} px")
    flat = mask if mask.ndim == 2 else mask.max(axis=2)
    on = flat > 0
    return overlay_mask(rgb, on) if on.any() else rgb


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Other depths scaled to 0..255 for display (16-bit parts, float previews)."""
    if np.issubdtype(image.dtype, np.floating):
        scaled = np.clip(image, 0.0, 1.0) * 255.0 if image.max(initial=0) <= 1.0 else image
    else:
        scaled = image.astype(np.float64) * (255.0 / np.iinfo(image.dtype).max)
    return np.ascontiguousarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))


def _value(value: Any) -> str:
    """One drawn parameter as people read it: 3 significant digits, lists shortened."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):  # e.g. a zoom per axis: {"x": 0.97, "y": 1.02}
        return "(" + ", ".join(f"{k} {_value(v)}" for k, v in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        items = [_value(v) for v in value[:4]]
        return "(" + ", ".join(items) + (", …" if len(value) > 4 else "") + ")"
    return str(value)


#: albumentations' names for what it drew, in words for the captions under the tiles.
_WORDS = {
    "alpha": "contrast ×", "beta": "brightness shift (grey levels)", "gamma": "gamma",
    "rotate": "turned °",
    "scale": "zoom", "intensity": "strength", "intensities": "shadow strength",
    "clip_limit": "local contrast", "radius": "blur radius px", "quality": "JPEG quality",
    "area": "size % of picture", "contrast": "strength", "defect_pixels": "pixels changed",
    "group_element": "turn/mirror", "color_shift": "colour shift", "brightness": "brightness ×",
    "saturation": "saturation ×", "hue": "hue shift", "angle": "light from °",
}
#: Drawn values that say nothing to a person (internal orders, kernels, sizes, file types).
_HIDDEN = frozenset({"order", "image_type", "kernel", "max_height", "max_width", "alias_blur"})


def describe_applied(applied: list[dict[str, Any]]) -> str:
    """``applied`` (the steps that ran on one image and what they drew) in one line of words,
    e.g. "Rotate: angle 12.3 · Noise: std 0.04"; "nothing applied" when no step ran (each
    step runs with its probability, so an image may come out unchanged)."""
    if not applied:
        return "Nothing applied to this image (each change runs with its chance)."
    parts = []
    for step in applied:
        spec = TRANSFORMS.get(step.get("transform", ""))
        title = spec.title if spec is not None else str(step.get("transform", "?"))
        params = step.get("params") or {}
        values = ", ".join(
            f"{_WORDS.get(k, k.replace('_', ' '))} "
            f"{_value(100 * v if k == 'area' and isinstance(v, float) else v)}"
            for k, v in params.items() if k not in _HIDDEN)
        parts.append(f"{title}: {values}" if values else title)
    return " · ".join(parts)

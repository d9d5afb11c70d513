"""Applying a config to images: the preview grid and the extra training copies.

Both build one seeded pipeline per call and run it over the images in order, so the same config
and images always give the same pixels - a preview that changed on every rerun could not be
judged, and a training run could not be repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from engine.augment.schema import AugmentConfig, build_pipeline

# per-call bookkeeping albumentations records that says nothing to a person
_HIDDEN_PARAMS = {"shape", "output_shape", "interpolation", "mask_interpolation", "fill",
                  "fill_mask", "random_seed", "defect_image", "defect_mask"}
_MAX_LIST = 8  # longer arrays (noise maps, matrices) are left out of the summary


class AugmentedSample(NamedTuple):
    """One augmented image, its mask (bool HxW; None when none was given and no defect was
    painted) and the steps that ran: ``[{"transform": name, "params": {...}}]``."""

    image: np.ndarray
    mask: np.ndarray | None
    applied: list[dict[str, Any]]


def _short(value: Any) -> Any:
    """A JSON-able, short form of an applied parameter, or ``...`` (Ellipsis) to leave it out."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return round(float(value), 3) if np.isfinite(value) else str(float(value))
    if isinstance(value, str):
        return str(value)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size > _MAX_LIST:
            return ...
        value = value.tolist()
    if isinstance(value, list | tuple):
        if len(value) > _MAX_LIST:
            return ...
        items = [_short(v) for v in value]
        return ... if any(v is ... for v in items) else items
    if isinstance(value, dict):
        items = {str(k): _short(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not ...}
    return ...


def summarize_applied(applied: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """albumentations' ``applied_transforms`` as short JSON-able records."""
    out = []
    for name, params in applied:
        short = {}
        for key, value in params.items():
            if key in _HIDDEN_PARAMS:
                continue
            kept = _short(value)
            if kept is not ...:
                short[key] = kept
        out.append({"transform": name, "params": short})
    return out


def _check_images(images: Sequence[np.ndarray]) -> None:
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3:
            raise ValueError(f"images[{index}]: expected an RGB uint8 HxWx3 array, got "
                             f"{getattr(image, 'dtype', type(image).__name__)} "
                             f"{getattr(image, 'shape', '')}")


def augment_images(images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                   config: AugmentConfig, *,
                   donors: Sequence[np.ndarray] = ()) -> list[AugmentedSample]:
    """Each image (with its mask) through the seeded pipeline of ``config``.

    Masks follow geometric steps and gain the pixels of painted synthetic defects; an image
    without a mask gets one when the config paints defects, so the defect is labelled.
    """
    images = list(images)
    masks = list(masks)
    if len(masks) != len(images):
        raise ValueError(f"masks: {len(masks)} given for {len(images)} images")
    _check_images(images)
    pipeline = build_pipeline(config, donors=donors)
    samples = []
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        data: dict[str, Any] = {"image": image}
        if mask is not None:
            if mask.shape[:2] != image.shape[:2]:
                raise ValueError(f"masks[{index}]: shape {mask.shape[:2]} does not match the "
                                 f"image's {image.shape[:2]}")
            data["mask"] = (np.asarray(mask) > 0).astype(np.uint8)
        elif config.has_synthetic:
            data["mask"] = np.zeros(image.shape[:2], np.uint8)
        result = pipeline(**data)
        out_mask = result["mask"] > 0 if "mask" in result else None
        if out_mask is not None and out_mask.ndim == 3:
            out_mask = out_mask[..., 0]
        samples.append(AugmentedSample(result["image"], out_mask,
                                       summarize_applied(result.get("applied_transforms", []))))
    return samples


def augmented_copies(images: Sequence[np.ndarray], config: AugmentConfig,
                     copies: int) -> list[np.ndarray]:
    """``copies`` augmented versions of each image (image 0's copies first), without synthetic
    defects - training on painted defects would teach the model they are normal."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise ValueError(f"copies: expected a whole number >= 0, got {copies!r}")
    images = list(images)
    _check_images(images)
    pipeline = build_pipeline(config, synthetic=False)
    return [pipeline(image=image)["image"] for image in images for _ in range(copies)]

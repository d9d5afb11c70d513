"""Synthetic defects painted onto good images, each with the exact mask of the pixels it changed.

With few or no real defects, a detector's threshold and a page's "would it catch this?" preview
can only be judged against made-up anomalies. Four published recipes are offered:

* ``perlin``  - DRAEM: a Perlin-noise blob filled with a procedural texture (never a download);
* ``cutpaste`` / ``scar`` - CutPaste: a rectangle / a thin rotated strip of the image moved
  elsewhere, with a brightness jitter;
* ``seamless`` - NSA: a patch of another good image Poisson-blended in with ``cv2.seamlessClone``.

Two promises hold for every kind, because evaluation on synthetic defects is only honest if the
label is right and the defect is not trivially out of range:

* the mask is computed LAST from the pixel difference, so it is exactly the changed pixels;
* every channel stays within the image's own [min, max], and a grey-looking RGB image (three
  equal channels, e.g. magnetic tiles) stays grey.

``area`` is the fraction of the image's pixels meant to change, ``contrast`` in (0, 1] how far
the defect departs from what was there. The albumentations ``DualTransform`` wrappers at the end
put them in a pipeline (the mask target receives the defect's mask) and serialise with
``A.to_dict`` / ``A.from_dict`` once this module is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from albumentations.core.transforms_interface import DualTransform
from anomalib.data.utils.generators import generate_perlin_noise
from pydantic import Field

SYNTHETIC_KINDS: tuple[str, ...] = ("perlin", "cutpaste", "scar", "seamless")
AREA_RANGE = (0.0005, 0.2)

# generate_perlin_noise draws from torch's global generator; seeding it inside fork_rng keeps the
# defect reproducible from our numpy rng and leaves the caller's torch RNG state untouched. The lock
# keeps two preview threads from interleaving their seeded draws.
_TORCH_RNG_LOCK = threading.Lock()


class SyntheticDefect(NamedTuple):
    """A defective copy of an image and ``mask`` (bool HxW): exactly the pixels that differ."""

    image: np.ndarray
    mask: np.ndarray


class FlatImageError(ValueError):
    """The image has a single value per channel, so nothing can change within its own range."""


# ----------------------------------------------------------------------------- argument checks


def _check_args(image: np.ndarray, area: float, contrast: float) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image: expected a uint8 numpy array, got "
                         f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"image: expected HxW or HxWx3 (or HxWx1), got shape {image.shape}")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"image: at least 16x16 pixels needed, got {image.shape[:2]}")
    if isinstance(area, bool) or not isinstance(area, int | float) or not (
            AREA_RANGE[0] <= area <= AREA_RANGE[1]):
        raise ValueError(f"area: must be a fraction of the image in "
                         f"[{AREA_RANGE[0]}, {AREA_RANGE[1]}], got {area!r}")
    if isinstance(contrast, bool) or not isinstance(contrast, int | float) or not (
            0 < contrast <= 1):
        raise ValueError(f"contrast: must be in (0, 1], got {contrast!r}")


def _as_hwc(image: np.ndarray) -> np.ndarray:
    return image[..., None] if image.ndim == 2 else image


def _is_grey(image: np.ndarray) -> bool:
    """Three equal channels: a grey part photographed or stored as RGB."""
    return (image.ndim == 3 and image.shape[2] == 3
            and bool(np.array_equal(image[..., 0], image[..., 1]))
            and bool(np.array_equal(image[..., 0], image[..., 2])))


# ----------------------------------------------------------------------------- shared finishing


def _finish(image: np.ndarray, region: np.ndarray, wanted: np.ndarray) -> SyntheticDefect:
    """Write ``wanted`` (float NxC, the new values of the N ``region`` pixels) clipped to the
    image's own range, and measure the mask.

    Pixels of the region that rounding or clipping left unchanged are nudged by one grey level
    (towards the defect where the range allows, else away from it), so the realised area follows
    the requested one instead of silently shrinking on smooth images. The mask is then read off the
    difference, so it is exact by construction.
    """
    hwc = _as_hwc(image)
    lo, hi = _range(image)
    if np.all(lo == hi):
        raise FlatImageError("image: every pixel has the same value, so no defect can stay "
                             "within the image's own intensity range")
    if _is_grey(hwc):
        wanted = np.repeat(wanted[:, :1], 3, axis=1)
    out = hwc.copy()
    values = np.clip(np.rint(wanted), lo, hi)
    original = hwc[region].astype(np.float32)
    same = np.all(values == original, axis=1)
    if same.any():
        towards = np.sign(wanted[same] - original[same])
        towards[towards == 0] = 1.0
        step = original[same] + towards
        fits = (step >= lo) & (step <= hi)
        step = np.where(fits, step, original[same] - towards)
        # channels whose range is a single value cannot move at all
        values[same] = np.clip(step, lo, hi)
    values = values.astype(np.uint8)
    out[region] = values
    # only region pixels were written, so comparing them alone is the exact full-image mask
    mask = np.zeros(region.shape, bool)
    mask[region] = np.any(values != hwc[region], axis=1)
    result = out.reshape(image.shape)
    return SyntheticDefect(result, mask)


def _range(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (min, max) as float32 vectors; cv2.minMaxLoc is ~10x faster than numpy here."""
    hwc = _as_hwc(image)
    bounds = [cv2.minMaxLoc(np.ascontiguousarray(hwc[..., c]))[:2] for c in range(hwc.shape[2])]
    lo, hi = zip(*bounds, strict=True)
    return np.asarray(lo, np.float32), np.asarray(hi, np.float32)


# ----------------------------------------------------------------------------- Perlin (DRAEM)


_PERLIN_SIDE = 128  # noise is smooth: drawn at most this size, then resized (16x less work at 512)


def _perlin(height: int, width: int, rng: np.random.Generator, scale: int) -> np.ndarray:
    """Perlin noise from anomalib (torch), seeded from ``rng``; float32 HxW roughly in [-1, 1]."""
    seed = int(rng.integers(0, 2**62))
    factor = max(1.0, min(height, width) / _PERLIN_SIDE)
    small_h, small_w = max(1, round(height / factor)), max(1, round(width / factor))
    with _TORCH_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        noise = generate_perlin_noise(small_h, small_w, scale=(scale, scale),
                                      device=torch.device("cpu"))
    noise = noise.numpy().astype(np.float32)
    if (small_h, small_w) != (height, width):
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
    return noise


def _perlin_scale(height: int, width: int, area: float, rng: np.random.Generator) -> int:
    """Lattice cells per side: small defects need finer noise so the blob is not one huge cell."""
    side = 2 ** int(np.ceil(np.log2(min(height, width, _PERLIN_SIDE))))
    coarsest = 2 if area >= 0.02 else 4
    finest = max(coarsest, min(16, side // 8))
    exponents = np.arange(int(np.log2(coarsest)), int(np.log2(finest)) + 1)
    return int(2 ** rng.choice(exponents))


def perlin_defect(image: np.ndarray, rng: np.random.Generator, area: float,
                  contrast: float) -> SyntheticDefect:
    """DRAEM-style anomaly: one stain with a Perlin edge, textured and blended.

    DRAEM thresholds a Perlin field alone, which scatters a defect over dozens of specks; a
    real stain or dent is one region, and "the smallest defect it catches" (detectability)
    only means something if ``area`` is one defect's size. So the field is a round bump at a
    random place plus Perlin noise (which makes the edge irregular), thresholded at the
    quantile that covers ``area`` (DRAEM's fixed 0.5 threshold gives anything from nothing to
    half the image). The bump outweighs the noise at the threshold, so no far-off specks
    appear. The fill is a second, finer Perlin field stretched over the image's own
    per-channel range - a procedural texture, so nothing is downloaded - blended in with
    weight ``contrast``.
    """
    _check_args(image, area, contrast)
    h, w = image.shape[:2]
    noise = _perlin(h, w, rng, _perlin_scale(h, w, area, rng))
    radius = np.sqrt(area * h * w / np.pi)  # of a disc covering ``area``
    cy = rng.uniform(radius, max(radius, h - radius))
    cx = rng.uniform(radius, max(radius, w - radius))
    yy, xx = np.ogrid[:h, :w]
    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (radius / 1.2) ** 2))
    field = bump.astype(np.float32) + 0.3 * noise
    sample = field[:: max(1, h // 128), :: max(1, w // 128)]  # quantile of ~16k values suffices
    threshold = np.quantile(sample, 1.0 - area)
    region = field > threshold
    if not region.any():
        region = noise >= noise.max()
    texture = _perlin(h, w, rng, _perlin_scale(h, w, 0.0, rng) * 2)
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    if rng.random() < 0.5:  # dark or bright stain, both occur on real parts
        texture = 1.0 - texture
    lo, hi = _range(image)
    fill = lo + texture[region][:, None] * (hi - lo)
    original = _as_hwc(image)[region].astype(np.float32)
    return _finish(image, region, original + contrast * (fill - original))


# ----------------------------------------------------------------------------- CutPaste


def _moved(image: np.ndarray, rng: np.random.Generator, size: tuple[float, float],
           angle: float, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` (w, h) rectangle of the image, rotated by ``angle``, pasted at another place.

    Returns (wanted float NxC for the region's pixels, region bool HxW). One affine warp moves
    the source rectangle's centre onto the target centre; reflecting borders keep content real
    near the edges. ``contrast`` blends the moved content in (1 = pasted outright) and scales a
    brightness jitter of up to a quarter of the image's range.
    """
    h, w = image.shape[:2]
    pw, ph = size
    half = 0.5 * np.hypot(pw, ph) if angle else 0.5 * max(pw, ph)
    margin_x = min(max(pw / 2, 1.0), w / 2 - 1)
    margin_y = min(max(ph / 2, 1.0), h / 2 - 1)
    src = (float(rng.uniform(margin_x, w - margin_x)), float(rng.uniform(margin_y, h - margin_y)))
    tmargin_x, tmargin_y = min(half, w / 2 - 1), min(half, h / 2 - 1)
    dst = (float(rng.uniform(tmargin_x, w - tmargin_x)),
           float(rng.uniform(tmargin_y, h - tmargin_y)))
    matrix = cv2.getRotationMatrix2D(src, angle, 1.0)
    matrix[:, 2] += (dst[0] - src[0], dst[1] - src[1])
    # work only in the target's bounding box: a scar on a 512-px image is a few hundred pixels
    x0, x1 = max(0, int(np.floor(dst[0] - half)) - 1), min(w, int(np.ceil(dst[0] + half)) + 2)
    y0, y1 = max(0, int(np.floor(dst[1] - half)) - 1), min(h, int(np.ceil(dst[1] + half)) + 2)
    boxed = matrix.copy()
    boxed[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(_as_hwc(image), boxed, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    warped = warped.reshape(y1 - y0, x1 - x0, -1).astype(np.float32)
    # the region: pixel centres whose source lies inside the source rectangle (a polygon fill
    # would add its whole outline and double the area of a thin scar)
    inverse = cv2.invertAffineTransform(matrix)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2] - src[0]
    v = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2] - src[1]
    inside = (np.abs(u) <= pw / 2) & (np.abs(v) <= ph / 2)
    if not inside.any():  # a sub-pixel rectangle still marks the pixel under its centre
        inside[min(y1 - y0 - 1, round(dst[1]) - y0), min(x1 - x0 - 1, round(dst[0]) - x0)] = True
    region = np.zeros((h, w), bool)
    region[y0:y1, x0:x1] = inside
    moved = warped[inside]
    original = _as_hwc(image)[region].astype(np.float32)
    lo, hi = _range(image)
    shift = float(rng.choice((-1.0, 1.0))) * contrast * 0.25 * (hi - lo)
    return original + contrast * (moved - original) + shift, region


def cutpaste(image: np.ndarray, rng: np.random.Generator, area: float,
             contrast: float) -> SyntheticDefect:
    """CutPaste (Li et al. 2021): a rectangle of ``area`` of the image pasted elsewhere.

    The aspect ratio is drawn from [0.3, 3.3] as in the paper; ``contrast`` 1 pastes outright with
    a brightness jitter of a quarter of the image's range, lower values blend in fainter.
    """
    _check_args(image, area, contrast)
    h, w = image.shape[:2]
    pixels = area * h * w
    aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))
    pw = float(np.clip(np.sqrt(pixels * aspect), 1, w - 2))
    ph = float(np.clip(pixels / pw, 1, h - 2))
    wanted, region = _moved(image, rng, (pw, ph), 0.0, contrast)
    return _finish(image, region, wanted)


def cutpaste_scar(image: np.ndarray, rng: np.random.Generator, area: float,
                  contrast: float) -> SyntheticDefect:
    """CutPaste scar: a thin strip (length 6-12x its width) of the image, rotated ±45°, pasted."""
    _check_args(image, area, contrast)
    h, w = image.shape[:2]
    pixels = area * h * w
    ratio = float(rng.uniform(6, 12))
    width = max(1.5, float(np.sqrt(pixels / ratio)))
    length = min(pixels / width, 0.9 * min(h, w))
    width = max(1.5, pixels / length)
    angle = float(rng.uniform(-45, 45))
    wanted, region = _moved(image, rng, (length, width), angle, contrast)
    return _finish(image, region, wanted)


# ----------------------------------------------------------------------------- NSA seamless patch


def seamless_patch(image: np.ndarray, donor: np.ndarray | None, rng: np.random.Generator,
                   area: float, contrast: float) -> SyntheticDefect:
    """NSA (Schlüter et al. 2022): a patch of another good image Poisson-blended into this one.

    ``donor`` is resized to the image when sizes differ; without one, the image itself flipped
    both ways is the donor. ``cv2.seamlessClone`` (NORMAL_CLONE) matches the patch's gradients to
    the surroundings so the seam is invisible - a hard case, unlike a pasted rectangle; the
    result is blended with weight ``contrast`` and shifted in brightness by ``contrast`` x a
    quarter of the image's range.
    """
    _check_args(image, area, contrast)
    h, w = image.shape[:2]
    hwc = _as_hwc(image)
    if donor is None:
        donor = image[::-1, ::-1]
    if not isinstance(donor, np.ndarray) or donor.dtype != np.uint8 or donor.ndim not in (2, 3):
        raise ValueError("donor: expected a uint8 HxW or HxWx3 image")
    donor3 = _to_rgb(donor)
    if donor3.shape[:2] != (h, w):
        donor3 = cv2.resize(donor3, (w, h), interpolation=cv2.INTER_AREA)
    dst3 = _to_rgb(image)
    pixels = area * h * w
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    pw = int(np.clip(round(np.sqrt(pixels * aspect)), 1, w - 12))
    ph = int(np.clip(round(pixels / pw), 1, h - 12))
    # The Poisson solve keeps the clone's outer ring fixed to the destination and OpenCV fails on
    # tiny clones, so a context margin around the defect is cloned and only its centre is kept.
    cw, ch = min(pw + 8, w - 4), min(ph + 8, h - 4)
    sx, sy = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    cx = int(rng.integers(cw // 2 + 2, w - (cw - cw // 2) - 1))
    cy = int(rng.integers(ch // 2 + 2, h - (ch - ch // 2) - 1))
    patch = np.ascontiguousarray(donor3[sy:sy + ch, sx:sx + cw])
    patch_mask = np.full((ch, cw), 255, np.uint8)
    cloned = cv2.seamlessClone(patch, dst3, patch_mask, (cx, cy), cv2.NORMAL_CLONE)
    region = np.zeros((h, w), bool)
    x0, y0 = cx - pw // 2, cy - ph // 2
    region[y0:y0 + ph, x0:x0 + pw] = True
    cloned = cloned[region][:, : hwc.shape[2]].astype(np.float32)
    lo, hi = _range(image)
    shift = float(rng.choice((-1.0, 1.0))) * contrast * 0.25 * (hi - lo)
    original = hwc[region].astype(np.float32)
    return _finish(image, region, original + contrast * (cloned - original) + shift)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------- dispatch


def inject(image: np.ndarray, kind: str, rng: np.random.Generator, area: float,
           contrast: float, donor: np.ndarray | None = None) -> SyntheticDefect:
    """One synthetic defect of ``kind`` (one of :data:`SYNTHETIC_KINDS`)."""
    if kind == "perlin":
        return perlin_defect(image, rng, area, contrast)
    if kind == "cutpaste":
        return cutpaste(image, rng, area, contrast)
    if kind == "scar":
        return cutpaste_scar(image, rng, area, contrast)
    if kind == "seamless":
        return seamless_patch(image, donor, rng, area, contrast)
    raise ValueError(f"kind: must be one of {', '.join(SYNTHETIC_KINDS)}, not {kind!r}")


# ----------------------------------------------------------------------------- albumentations


class _SyntheticTransform(DualTransform):
    """Base of the pipeline wrappers: draws area and contrast from their ranges, paints once.

    The defect is computed in ``get_params_dependent_on_data`` (it needs the current image) from a
    child generator of the transform's own seeded generator, so a seeded ``A.Compose`` repeats it.
    The mask target gets the defect's pixels added (value 1, or the mask's own foreground value).
    """

    kind: str = ""

    class InitSchema(DualTransform.InitSchema):
        area: tuple[float, float] = Field(default=(0.005, 0.03))
        contrast: tuple[float, float] = Field(default=(0.3, 0.7))

    def __init__(self, area: tuple[float, float] = (0.005, 0.03),
                 contrast: tuple[float, float] = (0.3, 0.7), p: float = 0.5) -> None:
        super().__init__(p=p)
        _check_range("area", area, *AREA_RANGE)
        _check_range("contrast", contrast, 1e-6, 1.0)
        self.area = (float(area[0]), float(area[1]))
        self.contrast = (float(contrast[0]), float(contrast[1]))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("area", "contrast")

    def _donor(self, image: np.ndarray) -> np.ndarray | None:
        return None

    def get_params_dependent_on_data(self, params: dict[str, Any],
                                     data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        area = float(self.random_generator.uniform(*self.area))
        contrast = float(self.random_generator.uniform(*self.contrast))
        child = np.random.default_rng(int(self.random_generator.integers(0, 2**62)))
        defect = inject(image, self.kind, child, area, contrast, donor=self._donor(image))
        return {"area": area, "contrast": contrast, "defect_image": defect.image,
                "defect_mask": defect.mask, "defect_pixels": int(defect.mask.sum())}

    def apply(self, img: np.ndarray, defect_image: np.ndarray, **params: Any) -> np.ndarray:
        return defect_image.reshape(img.shape)

    def apply_to_mask(self, mask: np.ndarray, defect_mask: np.ndarray,
                      **params: Any) -> np.ndarray:
        foreground = mask.max() if mask.any() else 1
        marked = defect_mask.reshape(defect_mask.shape + (1,) * (mask.ndim - 2))
        return np.where(marked, foreground, mask).astype(mask.dtype)


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    ok = (isinstance(value, Sequence) and len(value) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
    if not ok or not (low <= value[0] <= value[1] <= high):
        raise ValueError(f"{name}: expected (low, high) with {low} <= low <= high <= {high}, "
                         f"got {value!r}")


class PerlinDefect(_SyntheticTransform):
    """DRAEM-style Perlin blob (see :func:`perlin_defect`)."""

    kind = "perlin"


class CutPaste(_SyntheticTransform):
    """CutPaste rectangle (see :func:`cutpaste`)."""

    kind = "cutpaste"


class CutPasteScar(_SyntheticTransform):
    """CutPaste scar (see :func:`cutpaste_scar`)."""

    kind = "scar"


class SeamlessPatch(_SyntheticTransform):
    """NSA seamless patch from a donor good image (see :func:`seamless_patch`).

    ``donors`` are arrays, so they are not serialised: a pipeline rebuilt with ``A.from_dict``
    uses each image itself, flipped, as donor until donors are given again.
    """

    kind = "seamless"

    def __init__(self, area: tuple[float, float] = (0.005, 0.03),
                 contrast: tuple[float, float] = (0.3, 0.7), p: float = 0.5,
                 donors: Sequence[np.ndarray] = ()) -> None:
        super().__init__(area=area, contrast=contrast, p=p)
        self.donors = list(donors)

    def _donor(self, image: np.ndarray) -> np.ndarray | None:
        if not self.donors:
            return None
        return self.donors[int(self.random_generator.integers(0, len(self.donors)))]


SYNTHETIC_TRANSFORMS: dict[str, type[_SyntheticTransform]] = {
    "PerlinDefect": PerlinDefect,
    "CutPaste": CutPaste,
    "CutPasteScar": CutPasteScar,
    "SeamlessPatch": SeamlessPatch,
}

__all__ = ["SYNTHETIC_KINDS", "SYNTHETIC_TRANSFORMS", "CutPaste", "CutPasteScar",
           "FlatImageError", "PerlinDefect", "SeamlessPatch", "SyntheticDefect",
           "cutpaste", "cutpaste_scar", "inject", "perlin_defect", "seamless_patch"]

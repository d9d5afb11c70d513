"""Stress tests of a trained detector: how small a defect it catches, and what lighting, blur
and noise do to the scores of good parts.

Both tests start from held-out GOOD images (the model never learned from them) and a
``score_fn(images) -> scores`` (higher = more anomalous, a score at or above ``threshold`` is a
defect, the project-wide convention of :mod:`engine.thresholds`). Nothing here knows which
model scores, nor where the images come from: the caller passes plain arrays.

* :func:`detectability` injects synthetic defects (:func:`engine.augment.synthetic.inject`) of
  controlled area and contrast and counts how many the threshold catches. A good image that
  already scores at or over the threshold unchanged is left out: "caught" would not be the
  defect's doing there.
* :func:`robustness` applies one albumentations transform at a time with FIXED parameters
  (each range is ``(x, x)``, ``p=1``), so "strength 0.5" is one exact change, not a draw,
  and shows how far the good scores move toward the threshold.

Every test is seeded: the same images, score function and seed give the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np


def _albumentations() -> Any:
    """albumentations, imported on first use: it imports torch (seconds), and the Evaluation
    page imports this module for its ladder names and default levels only."""
    import albumentations

    return albumentations


ScoreFn = Callable[[Sequence[np.ndarray]], np.ndarray]
#: ``progress(stage, fraction)`` with fraction in [0, 1]; may raise to stop the test (Cancel).
ProgressFn = Callable[[str, float], None]

#: Requested defect areas as fractions of the image's pixels (rows report them in percent).
DEFAULT_AREAS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05)
DEFAULT_CONTRASTS = (0.25, 0.5, 1.0)
DEFAULT_STRENGTHS = (0.25, 0.5, 0.75, 1.0)


# --------------------------------------------------------------------------- ladders


@dataclass(frozen=True)
class Ladder:
    """One transform at growing strength: ``build(A, s)`` is the transform at strength ``s`` in
    (0, 1]; ``full`` says in words what strength 1 is, for the people reading the chart."""

    name: str
    title: str
    group: Literal["light", "blur", "noise"]
    full: str
    build: Callable[[Any, float], Any]  # (albumentations, strength) -> transform


#: The Augmentation page's transform (an ``engine.augment.schema.TRANSFORMS`` name) whose copies
#: teach the model each ladder's change: what the robustness hint tells a person to switch on.
AUGMENTATION_TWIN = {
    "brighter": "RandomBrightnessContrast", "darker": "RandomBrightnessContrast",
    "gamma": "RandomGamma", "uneven_light": "Illumination", "shadow": "RandomShadow",
    "blur": "GaussianBlur", "motion_blur": "MotionBlur", "defocus": "Defocus",
    "noise": "GaussNoise", "sensor_noise": "ISONoise", "jpeg": "ImageCompression",
}


def _streak(strength: float) -> int:
    """Odd motion-blur kernel from 3 (the smallest) to 11 px, a different one per quarter."""
    return 1 + 2 * max(1, math.ceil(5 * strength - 1e-9))


#: The offered ladders, in display order. Strength is relative to the image the model sees
#: (the caller shrinks images to the model's input size first), so a 2 px blur means the
#: same to a 96 px and a 384 px model only in proportion; the ``full`` words say what it is.
LADDERS: dict[str, Ladder] = {ladder.name: ladder for ladder in (
    Ladder("brighter", "Brighter light", "light", "30 % of full brightness added",
           lambda A, s: A.RandomBrightnessContrast(brightness_limit=(0.3 * s, 0.3 * s),
                                                contrast_limit=(0.0, 0.0), p=1.0)),
    Ladder("darker", "Dimmer light", "light", "30 % of full brightness taken away",
           lambda A, s: A.RandomBrightnessContrast(brightness_limit=(-0.3 * s, -0.3 * s),
                                                contrast_limit=(0.0, 0.0), p=1.0)),
    Ladder("gamma", "Camera gamma", "light", "gamma 1.6 (mid-tones darker)",
           lambda A, s: A.RandomGamma(gamma_limit=(100 + 60 * s, 100 + 60 * s), p=1.0)),
    Ladder("uneven_light", "Uneven light", "light",
           "a linear light gradient darkening one side by 20 %",
           lambda A, s: A.Illumination(mode="linear", intensity_range=(max(0.01, 0.2 * s),) * 2,
                                    effect_type="darken", angle_range=(45.0, 45.0), p=1.0)),
    Ladder("shadow", "Shadow", "light", "one shadow that dims its area by 60 %",
           lambda A, s: A.RandomShadow(shadow_roi=(0.0, 0.0, 1.0, 1.0), num_shadows_limit=(1, 1),
                                    shadow_intensity_range=(0.6 * s, 0.6 * s), p=1.0)),
    Ladder("blur", "Out of focus (soft)", "blur", "a Gaussian blur of 2 px",
           lambda A, s: A.GaussianBlur(blur_limit=0, sigma_limit=(2.0 * s, 2.0 * s), p=1.0)),
    Ladder("motion_blur", "Motion blur", "blur", "an 11 px streak",
           lambda A, s: A.MotionBlur(blur_limit=(_streak(s),) * 2, allow_shifted=False, p=1.0)),
    Ladder("defocus", "Out of focus (lens)", "blur", "a 5 px lens blur",
           lambda A, s: A.Defocus(radius=(max(1, round(5 * s)),) * 2, alias_blur=(0.1, 0.1),
                               p=1.0)),
    Ladder("noise", "Grainy image", "noise", "Gaussian noise of 12 % of full scale",
           lambda A, s: A.GaussNoise(std_range=(0.12 * s, 0.12 * s), p=1.0)),
    Ladder("sensor_noise", "Camera sensor noise", "noise", "strong ISO noise (intensity 0.8)",
           lambda A, s: A.ISONoise(color_shift=(0.05 * s, 0.05 * s),
                                intensity=(0.8 * s, 0.8 * s), p=1.0)),
    Ladder("jpeg", "JPEG compression", "noise", "JPEG quality 10",
           lambda A, s: A.ImageCompression(quality_range=(round(95 - 85 * s),) * 2, p=1.0)),
)}


def _check_strengths(strengths: Sequence[float]) -> None:
    bad = [s for s in strengths if not 0.0 < float(s) <= 1.0]
    if not strengths or bad:
        raise ValueError(f"strengths must be in (0, 1], got {list(strengths)}")


def _scores(score_fn: ScoreFn, images: Sequence[np.ndarray]) -> np.ndarray:
    scores = np.asarray(score_fn(list(images)), dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(images):
        raise ValueError(f"score function returned {scores.shape[0]} scores for "
                         f"{len(images)} images")
    return scores


def _baseline(goods: Sequence[np.ndarray], score_fn: ScoreFn,
              baseline: np.ndarray | None) -> np.ndarray:
    if not goods:
        raise ValueError("the stress test needs at least one good image")
    if baseline is None:
        return _scores(score_fn, goods)
    out = np.asarray(baseline, dtype=np.float64).reshape(-1)
    if out.shape[0] != len(goods):
        raise ValueError(f"baseline has {out.shape[0]} scores for {len(goods)} images")
    return out


# --------------------------------------------------------------------------- detectability


def detectability(
    goods: Sequence[np.ndarray],
    score_fn: ScoreFn,
    threshold: float,
    *,
    areas: Sequence[float] = DEFAULT_AREAS,
    contrasts: Sequence[float] = DEFAULT_CONTRASTS,
    kind: str = "perlin",
    seed: int = 0,
    baseline: np.ndarray | None = None,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Detection rate of synthetic defects per (area, contrast), areas ascending.

    Row: ``area`` (requested, % of the image), ``area_realised`` (mean % of pixels the
    injection really changed: shapes are drawn, so it differs a little), ``contrast``,
    ``kind``, ``n`` (good images that score under the threshold unchanged: only those can
    show a catch), ``detected`` and ``detection_rate`` (share of them at or over the threshold
    with the defect), ``mean_score``.

    The same image and area get the same defect shape at every contrast (one generator per
    (area, image)), so rates across contrasts compare the same defects.
    ``baseline``: the goods' unchanged scores when the caller has them (saves a scoring).
    """
    from engine.augment.synthetic import inject

    threshold = float(threshold)
    areas = sorted(float(a) for a in areas)
    contrasts = sorted(float(c) for c in contrasts)
    if not areas or not contrasts:
        raise ValueError("detectability needs at least one area and one contrast")
    base = _baseline(goods, score_fn, baseline)
    usable = [img for img, s in zip(goods, base, strict=True) if s < threshold]
    if not usable:
        raise ValueError(f"all {len(goods)} good images already score at or over the "
                         f"threshold {threshold:.4g}, so no defect can be caught on them")
    n = len(usable)
    rows: list[dict[str, Any]] = []
    total = len(areas) * len(contrasts)
    for i, area in enumerate(areas):
        for j, contrast in enumerate(contrasts):
            if progress:
                progress(f"defects of {100 * area:.2g} % of the image", (i * len(contrasts) + j)
                         / total)
            injected, realised = [], []
            for k, image in enumerate(usable):
                rng = np.random.default_rng([seed, i, k])
                donor = usable[(k + 1) % n] if kind == "seamless" else None
                defect = inject(image, kind, rng, area, contrast, donor=donor)
                injected.append(defect.image)
                realised.append(float(np.mean(defect.mask)))
            scores = _scores(score_fn, injected)
            detected = int((scores >= threshold).sum())
            rows.append({
                "area": 100.0 * area, "area_realised": 100.0 * float(np.mean(realised)),
                "contrast": contrast, "kind": kind, "n": n, "detected": detected,
                "detection_rate": detected / n, "mean_score": float(scores.mean()),
            })
    if progress:
        progress("defects measured", 1.0)
    return rows


def smallest_caught(rows: Sequence[dict[str, Any]], rate: float = 0.9
                    ) -> list[dict[str, Any]]:
    """Per contrast (strongest first): the smallest area from which on EVERY larger tested area
    is caught at least ``rate`` of the time.

    "From which on" rather than "any": a lucky catch at one tiny size with misses above it is
    not a size the model reliably catches. ``area`` is None when no tested area qualifies;
    ``detected``, ``n`` and ``detection_rate`` are those of the qualifying area.
    """
    out = []
    for contrast in sorted({float(r["contrast"]) for r in rows}, reverse=True):
        level = sorted((r for r in rows if float(r["contrast"]) == contrast),
                       key=lambda r: r["area"])
        best: dict[str, Any] | None = None
        for row in reversed(level):
            if row["detection_rate"] < rate:
                break
            best = row
        out.append({"contrast": contrast, "rate": rate,
                    "area": None if best is None else best["area"],
                    "area_realised": None if best is None else best["area_realised"],
                    "detected": None if best is None else best["detected"],
                    "n": level[0]["n"] if level else 0,
                    "detection_rate": None if best is None else best["detection_rate"]})
    return out


# --------------------------------------------------------------------------- robustness


def robustness(
    goods: Sequence[np.ndarray],
    score_fn: ScoreFn,
    threshold: float,
    *,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    transforms: Sequence[str] | None = None,
    seed: int = 0,
    baseline: np.ndarray | None = None,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Scores of the goods under each transform of :data:`LADDERS` (or ``transforms``) at
    each strength; a strength-0 row per transform holds the unchanged scores (no scoring).

    Row: ``transform``, ``title``, ``group``, ``strength``, ``n``, ``mean_score``,
    ``max_score``, ``share_over`` (share of the images at or over the threshold),
    ``pushed_over`` (images under the threshold unchanged that this change puts at or over it),
    ``toward`` = (mean score - unchanged mean) / (threshold - unchanged mean): the share of the
    way to the threshold the typical good part moved (0 = no change, 1 = at the threshold,
    negative = further from it; None when the unchanged mean is already at or over it), and
    ``margin`` = (threshold - max score) / (threshold - unchanged max): the room left under
    the threshold for the worst image, relative to unchanged (1 = as before, 0 = at it,
    below 0 = over; None when an unchanged image is already at or over it).
    """
    names = list(LADDERS) if transforms is None else list(transforms)
    unknown = [t for t in names if t not in LADDERS]
    if unknown or not names:
        raise ValueError(f"unknown transform(s) {unknown or names}; known: "
                         f"{', '.join(LADDERS)}")
    threshold = float(threshold)
    strengths = sorted(float(s) for s in strengths)
    _check_strengths(strengths)
    base = _baseline(goods, score_fn, baseline)
    below = base < threshold
    base_mean, base_max = float(base.mean()), float(base.max())

    def row(ladder: Ladder, strength: float, scores: np.ndarray) -> dict[str, Any]:
        mean, top = float(scores.mean()), float(scores.max())
        return {
            "transform": ladder.name, "title": ladder.title, "group": ladder.group,
            "strength": strength, "n": len(scores), "mean_score": mean, "max_score": top,
            "share_over": float((scores >= threshold).mean()),
            "pushed_over": int(((scores >= threshold) & below).sum()),
            "toward": ((mean - base_mean) / (threshold - base_mean)
                       if threshold > base_mean else None),
            "margin": (threshold - top) / (threshold - base_max) if threshold > base_max
            else None,
        }

    rows: list[dict[str, Any]] = []
    total = len(names) * len(strengths)
    A = _albumentations()  # noqa: N806 - the library's usual short name
    for i, name in enumerate(names):
        ladder = LADDERS[name]
        rows.append(row(ladder, 0.0, base))
        for j, strength in enumerate(strengths):
            if progress:
                progress(f"{ladder.title.lower()} at strength {strength:g}",
                         (i * len(strengths) + j) / total)
            pipeline = A.Compose([ladder.build(A, strength)], seed=seed + i)
            changed = [pipeline(image=image)["image"] for image in goods]
            rows.append(row(ladder, strength, _scores(score_fn, changed)))
    if progress:
        progress("lighting, blur and noise measured", 1.0)
    return rows


def pushes_over(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transforms that put a good image (under the threshold unchanged) at or over it, each
    with the LOWEST strength that does and how many it pushes there; weakest strength first.
    """
    found: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["strength"]):
        if r["pushed_over"] > 0 and r["transform"] not in found:
            found[r["transform"]] = {"transform": r["transform"], "title": r["title"],
                                     "group": r["group"], "strength": r["strength"],
                                     "pushed_over": r["pushed_over"], "n": r["n"]}
    return sorted(found.values(), key=lambda f: (f["strength"], f["transform"]))

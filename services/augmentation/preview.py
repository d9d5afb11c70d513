"""What the Augmentation page draws: a seeded sample of the project's images, before and after.

Two steps because they cost differently: :func:`preview_images` reads and shrinks files (slow
the first time, the page caches it), :func:`render_preview` augments the shrunk arrays (fast,
run on every slider move). The sample is seeded so the same images come back on every visit and
a change of settings is judged on the same pictures. Good images come first: they are what
training augments; a few defect images with their masks follow, so one sees that geometric
changes move a mask with its defect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import db.repositories as repo
from db.models import Image, Label
from engine.augment import AugmentConfig, augment_images, validate_config
from engine.data import ImageLoadError, load_image, load_mask
from engine.imaging import shrink_labels_to_fit, shrink_to_fit
from services.context import Kensa
from services.data.projects import require_project

log = logging.getLogger(__name__)

#: At most this share of the tiles shows defect images (the rest are goods, what training
#: augments); at least one when the project has defects and there are two tiles or more.
DEFECT_SHARE = 1 / 3

#: (file name, label, RGB image, bool mask or None): one image of the sample.
PreviewImage = tuple[str, str, np.ndarray, np.ndarray | None]


class PreviewTile(NamedTuple):
    """One before/after pair of the grid; ``applied`` lists the steps that ran on it."""

    name: str
    label: str
    before: np.ndarray
    after: np.ndarray
    mask_before: np.ndarray | None
    mask_after: np.ndarray | None
    applied: list[dict[str, Any]]


def _label(img: Image) -> str:
    if img.label == Label.GOOD:
        return "good"
    return f"defect ({img.defect_type})" if img.defect_type else "defect"


def _good_places(n: int, goods: int, defects: int) -> int:
    """How many of the ``n`` tiles are goods: all but the defects' share (up to DEFECT_SHARE,
    at least one tile when there are defects and two tiles or more)."""
    want_defects = min(defects, max(1 if n >= 2 else 0, int(n * DEFECT_SHARE)))
    return min(goods, n - want_defects)


def _read(ctx: Kensa, img: Image, long_side: int, skipped: list[str]) -> PreviewImage | None:
    """The shrunk image (and mask); None, with the reason in ``skipped``, when it cannot be
    read. A mask that cannot be read leaves the image without one, also with a reason."""
    path = ctx.home / img.path  # stored paths are absolute or relative to home
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        skipped.append(str(exc))
        return None
    mask = None
    if img.mask_path:
        try:
            full = load_mask(ctx.home / img.mask_path, image.shape[:2])
        except ImageLoadError as exc:
            skipped.append(f"{exc} (image shown without its mask)")
        else:
            mask = shrink_labels_to_fit(full.astype(np.uint8), long_side).astype(bool)
    return Path(path).name, _label(img), shrink_to_fit(image, long_side), mask


def _take(ctx: Kensa, candidates: Iterator[Image], count: int, long_side: int,
          skipped: list[str]) -> list[PreviewImage]:
    """Up to ``count`` readable images from ``candidates`` (consumed only as far as needed,
    so a later call continues where this one stopped); an unreadable one is replaced by the
    next candidate."""
    out: list[PreviewImage] = []
    while len(out) < count:
        img = next(candidates, None)
        if img is None:
            break
        item = _read(ctx, img, long_side, skipped)
        if item is not None:
            out.append(item)
    return out


def preview_images(
    ctx: Kensa, project: str, n: int = 12, seed: int = 0, long_side: int = 512,
    *, skipped: list[str] | None = None,
) -> list[PreviewImage]:
    """A seeded sample of ``n`` of the project's images, goods first, then defect images
    (those with a mask before those without), each shrunk to ``long_side`` px.

    Unreadable files are left out and replaced by others where the project has more; the
    reasons are appended to ``skipped`` when given (and logged). An empty list means the
    project has no readable image. LookupError (ProjectNotFound) for an unknown project.
    """
    skipped = [] if skipped is None else skipped
    already = len(skipped)
    with ctx.session(readonly=True) as s:
        project_id = require_project(s, project).id
        images = repo.list_images(s, project_id)
    rng = np.random.default_rng(seed)
    goods = [img for img in images if img.label == Label.GOOD]
    defects = [img for img in images if img.label != Label.GOOD]
    goods = [goods[i] for i in rng.permutation(len(goods))]
    defects = [defects[i] for i in rng.permutation(len(defects))]
    defects.sort(key=lambda img: img.mask_path is None)  # stable: masked first, still shuffled
    n_goods = _good_places(n, len(goods), len(defects))
    good_iter, defect_iter = iter(goods), iter(defects)
    good_part = _take(ctx, good_iter, n_goods, long_side, skipped)
    # defects take their share, plus the places goods could not fill; goods fill the rest
    defect_part = _take(ctx, defect_iter, n - len(good_part), long_side, skipped)
    good_part += _take(ctx, good_iter, n - len(good_part) - len(defect_part), long_side, skipped)
    for reason in skipped[already:]:
        log.warning("augmentation preview skipped: %s", reason)
    return good_part + defect_part


def render_preview(
    images: Sequence[PreviewImage], config: dict[str, Any] | AugmentConfig
) -> list[PreviewTile]:
    """Augment the sample with ``config`` (validated first: AugmentConfigError names the
    field). Synthetic defects that need a donor take it from the sample's good images."""
    checked = validate_config(config.to_json() if isinstance(config, AugmentConfig) else config)
    if not images:
        return []
    donors = [image for _, label, image, _ in images if label == "good"]
    samples = augment_images([item[2] for item in images], [item[3] for item in images],
                             checked, donors=donors)
    return [
        PreviewTile(name, label, image, sample.image, mask, sample.mask, sample.applied)
        for (name, label, image, mask), sample in zip(images, samples, strict=True)
    ]

"""Thumbnails and previews for the dataset gallery, encoded once and kept on disk.

Decoding a 16-bit TIFF or a 5 MP JPEG takes tens of milliseconds; a gallery page shows dozens
and Streamlit reruns the page on every click. Each thumbnail is therefore made once, written
as a small JPEG under ``$KENSA_HOME/cache/thumbs/`` keyed by the file's path, size and mtime
(a changed file gets a new thumbnail), and later reruns only read those bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import db.repositories as repo
from db.models import Image
from engine.artifacts import write_bytes_atomic
from engine.data import ImageLoadError, load_image, load_mask
from engine.imaging import shrink_to_fit
from services.context import Kensa
from services.data.projects import require_project

THUMB_SIDE = 192
PREVIEW_SIDE = 900
OVERLAY_RGB = (230, 40, 40)
OVERLAY_ALPHA = 0.35
#: The mask outline: a yellow line on a black border is visible on dark, light, red and
#: yellow parts alike (a red outline vanished on red or rusty parts).
OUTLINE_RGB = (255, 230, 0)
OUTLINE_BORDER_RGB = (0, 0, 0)
#: Part of the thumbnail cache key: a changed drawing style must not reuse old thumbnails.
STYLE = "outline-yellow-black"
PAD_RGB = (238, 242, 243)  # the theme's secondary background


def cache_dir(home: Path) -> Path:
    return Path(home) / "cache" / "thumbs"


def _stamp(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _key(path: Path, mask: Path | None, overlay: bool, side: int, square: bool) -> str:
    text = "|".join((_stamp(path), _stamp(mask if overlay else None), str(overlay), str(side),
                     str(square), STYLE))
    return hashlib.sha256(text.encode()).hexdigest()



def pad_square(image: np.ndarray, side: int) -> np.ndarray:
    """Centre a fitted image on a ``side`` x ``side`` canvas, so a gallery grid stays even
    whatever the aspect ratio (tall parts would otherwise make rows hundreds of px high)."""
    h, w = image.shape[:2]
    canvas = np.full((side, side, 3), PAD_RGB, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = image
    return canvas


def overlay_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tint the defect pixels and outline them (yellow on a black border, visible on any part),
    so small defects stay visible when shrunk."""
    out = image.astype(np.float32)
    tint = np.asarray(OVERLAY_RGB, np.float32)
    out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * tint
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    width = max(1, round(max(image.shape[:2]) / 200))
    cv2.drawContours(out, contours, -1, OUTLINE_BORDER_RGB, width + 2 * max(1, width // 2 + 1))
    cv2.drawContours(out, contours, -1, OUTLINE_RGB, width)
    return out


def render(path: Path, mask_path: Path | None, overlay: bool, side: int,
           square: bool = False) -> bytes:
    """JPEG bytes of the image fitted in ``side`` px (on a square canvas if ``square``),
    optionally with its mask drawn on it."""
    image = load_image(path)
    if overlay and mask_path is not None:
        try:
            mask = load_mask(mask_path, image.shape[:2])
        except ImageLoadError:
            mask = None
        if mask is not None:
            image = overlay_mask(image, mask)
    small = shrink_to_fit(image, side)
    if square:
        small = pad_square(small, side)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB
        raise RuntimeError(f"{path}: could not encode a thumbnail")
    return encoded.tobytes()


def thumbnail(home: Path, path: str | Path, mask_path: str | Path | None = None,
              overlay: bool = False, side: int = THUMB_SIDE,
              square: bool = True) -> bytes | None:
    """Cached thumbnail bytes, or None when the file cannot be decoded (shown as such).

    Thumbnails are square by default (grids); ``square=False`` keeps the image's own shape
    (the detail preview)."""
    src = Path(path)
    mask = Path(mask_path) if mask_path else None
    target = cache_dir(home) / f"{_key(src, mask, overlay, side, square)}.jpg"
    try:
        return target.read_bytes()
    except FileNotFoundError:
        pass
    try:
        data = render(src, mask, overlay, side, square)
    except (ImageLoadError, OSError):
        return None
    write_bytes_atomic(target, data)
    return data


def file_size(path: str | Path) -> int | None:
    """Bytes on disk, or None if the file is gone (the detail view says so)."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


# --------------------------------------------------------------------------- project listing

#: Plain words for engine.data's problem kinds (the Datasets page's validation report).
PROBLEM_WORDS = {
    "unreadable": "cannot be opened as an image",
    "empty": "empty file",
    "mask_size": "mask size differs from the image",
    "missing_mask": "defect image without a mask",
    "mask_unreadable": "mask cannot be opened",
    "duplicate": "duplicate of another image",
    "unsupported": "ignored (not an image, or in an unexpected folder)",
    "degenerate": "too small or a flat colour to train on",
    "mask_not_binary": "mask is not black/white (read by the > 127 rule)",
    "not_imported": "not imported (refused while copying)",
}


@dataclass(frozen=True)
class GalleryItem:
    """One image row as the gallery and the detail view need it (absolute paths)."""

    id: int
    name: str
    path: str
    sha256: str
    split: str
    label: str
    defect_type: str | None
    mask_path: str | None
    width: int | None
    height: int | None

    @property
    def title(self) -> str:
        """Split, label or defect type, and file name: names repeat across folders
        (``000.png`` in train/good and test/crack), so the name alone does not say which."""
        return f"{self.split} · {self.defect_type or self.label} · {self.name}"


@dataclass
class DatasetOverview:
    """Counts, problems and filter choices of one project, read in one transaction."""

    total: int
    counts: list[dict[str, Any]]
    defect_types: dict[str, int]
    problems: list[dict[str, str]]
    splits: list[str]
    labels: list[str]
    data_root: str

    @property
    def good(self) -> int:
        return sum(r["good"] for r in self.counts)

    @property
    def defect(self) -> int:
        return sum(r["defect"] for r in self.counts)


def _item(ctx: Kensa, img: Image) -> GalleryItem:
    path = str(ctx.resolve(img.path))
    mask = str(ctx.resolve(img.mask_path)) if img.mask_path else None
    return GalleryItem(img.id, Path(path).name, path, img.sha256, img.split, img.label,
                       img.defect_type, mask, img.width, img.height)


def dataset_overview(ctx: Kensa, name: str) -> DatasetOverview:
    """What the Datasets page shows above the gallery."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        counts = repo.image_counts(s, project.id)
        problems = repo.list_problems(s, project.id)
        data_root = project.data_root
    table: dict[str, dict[str, Any]] = {}
    defect_types: dict[str, int] = {}
    for (split, label, defect), n in sorted(counts.items(), key=lambda kv: str(kv[0])):
        row = table.setdefault(split, {"split": split, "good": 0, "defect": 0})
        row[label] += n
        if label == "defect":
            key = defect or "unspecified"
            defect_types[key] = defect_types.get(key, 0) + n
    order = {"train": 0, "val": 1, "test": 2}
    rows = sorted(table.values(), key=lambda r: order.get(r["split"], 9))
    for row in rows:
        row["total"] = row["good"] + row["defect"]
    return DatasetOverview(
        total=sum(counts.values()),
        counts=rows,
        defect_types=dict(sorted(defect_types.items())),
        problems=[
            {"file": p.path, "problem": PROBLEM_WORDS.get(p.kind, p.kind), "details": p.message}
            for p in problems
        ],
        splits=[r["split"] for r in rows],
        labels=sorted({label for (_, label, _) in counts}),
        data_root=data_root,
    )


def gallery_page(
    ctx: Kensa,
    name: str,
    *,
    split: str | None = None,
    label: str | None = None,
    defect_type: str | None = None,
    page: int = 1,
    per_page: int = 24,
) -> tuple[list[GalleryItem], int]:
    """One page of images (stable order) and how many match the filters in total."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        total = repo.count_images(s, project.id, split=split, label=label,
                                  defect_type=defect_type)
        rows = repo.list_images(s, project.id, split=split, label=label,
                                defect_type=defect_type,
                                offset=max(0, page - 1) * per_page, limit=per_page)
        return [_item(ctx, img) for img in rows], total


def image_detail(item: GalleryItem) -> dict[str, str]:
    """The metadata table of the detail view, every value read from the row or the file (the
    details may show the file's path and checksum; cards and captions do not)."""
    size = file_size(item.path)
    return {
        "File": item.path,
        "Size": f"{item.width} × {item.height} px" if item.width and item.height else "unknown",
        "File size": "file is missing" if size is None else f"{size / 1024:.1f} KB",
        "SHA-256": item.sha256,
        "Split": item.split,
        "Label": item.label,
        "Defect type": item.defect_type or "—",
        "Mask": item.mask_path or ("none" if item.label == "defect" else "— (good image)"),
    }

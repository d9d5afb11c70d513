"""Dataset discovery, validation and image loading.

Users bring folders, not curated benchmarks: files are corrupt, masks are missing or made at the
wrong size, the same photo was copied twice. This module finds the images of a dataset, says what
is wrong with which file, and keeps going with the good ones. It also owns the single place where
any image file becomes an ``H x W x 3`` uint8 RGB array, so every model sees the same pixels.

Two layouts are understood (detected automatically, MVTec first):

* **MVTec** -- ``train/good/*``; ``test/good/*`` (good) and ``test/<type>/*`` (defect of kind
  ``<type>``); masks in ``ground_truth/<type>/<stem>_mask.png``.
* **flat** -- ``good/*``; ``defect/*`` or ``defect/<type>/*``; masks in ``mask/defect/``,
  ``mask/<type>/``, ``mask/defect/<type>/`` or ``mask/`` (``masks/`` works too). The flat layout
  has no train/test split: its records get ``split == "all"`` and the caller decides the split.

Mask names are matched leniently: ``<stem>_mask.<any image suffix>`` first, then
``<stem>.<any image suffix>``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image, ImageFile

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

#: Split given to every record of the flat layout, which has no train/test folders.
SPLIT_ALL = "all"

ProblemKind = Literal[
    "unreadable",
    "empty",
    "mask_size",
    "missing_mask",
    "mask_unreadable",
    "duplicate",
    "unsupported",
]

# Truncated files must fail loudly; a half-decoded image would silently poison a memory bank.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DatasetError(ValueError):
    """The folder is not a dataset Kensa understands (the message says what was expected)."""


class ImageLoadError(ValueError):
    """One file could not be turned into pixels; the message names the file and the reason."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset; ``split`` is ``"train"``, ``"test"`` or ``"all"`` (flat layout)."""

    path: Path
    split: str
    label: str  # "good" | "defect"
    defect_type: str | None = None
    mask_path: Path | None = None


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file; ``kind`` is one of :data:`ProblemKind`."""

    path: Path
    kind: str
    message: str


@dataclass
class DatasetIndex:
    """What :func:`discover` found: usable records plus every problem, file by file."""

    root: Path
    layout: str  # "mvtec" | "flat"
    records: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def select(
        self,
        split: str | None = None,
        label: str | None = None,
        defect_type: str | None = None,
    ) -> list[ImageRecord]:
        """Records matching every filter that is given (``None`` matches anything)."""
        return [
            r
            for r in self.records
            if (split is None or r.split == split)
            and (label is None or r.label == label)
            and (defect_type is None or r.defect_type == defect_type)
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"good": n, "defect": m}}`` -- nested so it serialises to JSON as is."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            per_split = out.setdefault(r.split, {"good": 0, "defect": 0})
            per_split[r.label] += 1
        return out

    def defect_types(self) -> dict[str, int]:
        """Number of defect records per defect type (``"unspecified"`` when the type is unknown)."""
        counter = Counter(
            r.defect_type or "unspecified" for r in self.records if r.label == "defect"
        )
        return dict(sorted(counter.items()))

    def problem_counts(self) -> dict[str, int]:
        """Number of problems per kind, for a one-line summary."""
        return dict(sorted(Counter(p.kind for p in self.problems).items()))


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large TIFFs do not fill memory."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --------------------------------------------------------------------------- decoding


def _is_tiff(path: Path) -> bool:
    """TIFF by suffix or by magic bytes, since cameras sometimes write TIFFs named ``.png``."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _read_tiff(path: Path) -> np.ndarray:
    """First page of a TIFF in its native dtype, channels last."""
    arr = np.asarray(tifffile.imread(path, key=0))
    # Planar (separate) RGB comes back as C x H x W.
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_pil(path: Path, palette_as_indices: bool) -> np.ndarray:
    """Decode fully with Pillow (``load()`` raises on truncated data) and keep the native dtype."""
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode in ("P", "PA") and palette_as_indices:
            return np.asarray(im.getchannel(0) if mode == "PA" else im)
        if mode in ("1", "L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
            arr = np.asarray(im)
            return arr.astype(np.uint16) if mode.startswith("I;16") else arr
        # Palette, CMYK, YCbCr, LAB, HSV ...: Pillow knows how to get to RGB(A).
        has_alpha = mode in ("PA", "RGBa", "La") or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))


def _read_native(path: str | os.PathLike[str], palette_as_indices: bool = False) -> np.ndarray:
    """Decode any supported file to an array in its own dtype, or raise :class:`ImageLoadError`."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError(f"{p}: file not found") from None
    except OSError as exc:
        raise ImageLoadError(f"{p}: cannot read file ({exc})") from exc
    if p.is_dir():
        raise ImageLoadError(f"{p}: is a folder, not an image file")
    if size == 0:
        raise ImageLoadError(f"{p}: file is empty (0 bytes)")
    try:
        arr = _read_tiff(p) if _is_tiff(p) else _read_pil(p, palette_as_indices)
    except Exception as exc:  # decoders raise many unrelated types for bad bytes
        raise ImageLoadError(f"{p}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{p}: unsupported image shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
        raise ImageLoadError(f"{p}: unsupported number of channels ({arr.shape[2]})")
    return arr


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Scale any dtype to uint8 without clipping.

    Integers are scaled by their dtype's full range (16-bit: ``v / 257``), not stretched per
    image: a per-image stretch would erase brightness differences, which can be the defect, and
    would make two shots of the same part look different. Integer data wider than 16 bit whose
    values fit 16 bit (Pillow's mode ``I`` for 16-bit files) is treated as 16-bit. Floats in
    [0, 1] are scaled by 255; other float ranges have no canonical scale and are min-max stretched.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        values = np.clip(arr.astype(np.float64), 0, None)
        top = float(np.iinfo(arr.dtype).max)
        if arr.dtype.itemsize > 2 and values.max(initial=0.0) <= 65535:
            top = 65535.0
        elif arr.dtype == np.int8:
            top = 127.0
        return np.rint(values * (255.0 / top)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(values * 255.0).astype(np.uint8)
        if hi == lo:
            return np.zeros(values.shape, np.uint8)
        return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    raise ImageLoadError(f"{path}: unsupported pixel type {arr.dtype}")


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Any supported file as ``H x W x 3`` uint8 RGB.

    Grayscale is repeated to three channels; palette images are expanded; alpha is dropped, not
    composited, because alpha in inspection images is almost always meaningless and compositing
    would hide pixels under transparency. EXIF orientation is not applied: masks are drawn on the
    stored pixel grid. Empty, truncated or corrupt files raise :class:`ImageLoadError`.
    """
    p = Path(path)
    arr = _to_uint8(_read_native(p), p)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels == 4:  # RGB + alpha
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def load_mask(path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Mask file as ``H x W`` bool where any non-zero pixel is defect.

    Alpha channels are ignored (like :func:`load_image`); palette masks are read as palette
    indices, so index 0 is background whatever its colour. With ``shape=(H, W)`` a mask of a
    different size raises :class:`ImageLoadError` naming both sizes.
    """
    p = Path(path)
    arr = _read_native(p, palette_as_indices=True)
    if arr.ndim == 3:
        colour = arr[:, :, :1] if arr.shape[2] in (1, 2) else arr[:, :, :3]
        mask = np.any(colour != 0, axis=2)
    else:
        mask = arr != 0
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise ImageLoadError(
            f"{p}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) "
            f"but the image is {shape[0]}x{shape[1]}"
        )
    return mask


# --------------------------------------------------------------------------- discovery


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _visible_children(folder: Path) -> list[Path]:
    """Sorted entries of a folder, hidden files (``.DS_Store``...) left out."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


class _MaskFinder:
    """Looks masks up by image stem in an ordered list of candidate folders (listed once)."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, Path]] = {}

    def _index(self, folder: Path) -> dict[str, Path]:
        if folder not in self._cache:
            names: dict[str, Path] = {}
            for p in _visible_children(folder):
                if p.is_file() and _is_image(p):
                    names.setdefault(p.stem, p)
            self._cache[folder] = names
        return self._cache[folder]

    def find(self, stem: str, folders: list[Path]) -> Path | None:
        for folder in folders:
            names = self._index(folder)
            for key in (f"{stem}_mask", stem):
                if key in names:
                    return names[key]
        return None


def _collect(
    folder: Path,
    split: str,
    label: str,
    defect_type: str | None,
    mask_folders: list[Path],
    finder: _MaskFinder,
    records: list[ImageRecord],
    problems: list[Problem],
) -> None:
    """Add the images directly inside ``folder``; anything else there becomes ``unsupported``."""
    for p in _visible_children(folder):
        if p.is_dir():
            problems.append(Problem(p, "unsupported", f"{p}: unexpected folder, ignored"))
        elif not _is_image(p):
            problems.append(
                Problem(
                    p,
                    "unsupported",
                    f"{p}: not an image file (supported: {', '.join(IMAGE_SUFFIXES)}), ignored",
                )
            )
        else:
            mask = finder.find(p.stem, mask_folders) if label == "defect" else None
            records.append(ImageRecord(p, split, label, defect_type, mask))


def _unsupported_in(folder: Path, problems: list[Problem]) -> None:
    """List non-image files inside mask folders so stray files do not go unnoticed."""
    for p in _visible_children(folder):
        if p.is_file() and not _is_image(p):
            problems.append(Problem(p, "unsupported", f"{p}: not an image file, ignored"))


def _detect_layout(root: Path) -> str:
    if (root / "train" / "good").is_dir() or (root / "test").is_dir():
        return "mvtec"
    if (root / "good").is_dir() or (root / "defect").is_dir():
        return "flat"
    raise DatasetError(
        f"{root}: no dataset found. Expected the MVTec layout (train/good/, test/good/, "
        "test/<defect type>/, ground_truth/<defect type>/<stem>_mask.png) or the flat layout "
        "(good/, defect/ or defect/<defect type>/, masks in mask/defect/ or mask/<defect type>/)"
    )


def _discover_mvtec(root: Path, records: list[ImageRecord], problems: list[Problem]) -> None:
    finder = _MaskFinder()
    for sub in _visible_children(root / "train"):
        if sub.is_dir() and sub.name == "good":
            _collect(sub, "train", "good", None, [], finder, records, problems)
        else:
            problems.append(
                Problem(sub, "unsupported", f"{sub}: training data must be in train/good/, ignored")
            )
    for sub in _visible_children(root / "test"):
        if not sub.is_dir():
            problems.append(
                Problem(sub, "unsupported", f"{sub}: test images must be in test/<type>/, ignored")
            )
        elif sub.name == "good":
            _collect(sub, "test", "good", None, [], finder, records, problems)
        else:
            masks = [root / "ground_truth" / sub.name]
            _collect(sub, "test", "defect", sub.name, masks, finder, records, problems)
    for sub in _visible_children(root / "ground_truth"):
        _unsupported_in(sub, problems)


def _discover_flat(root: Path, records: list[ImageRecord], problems: list[Problem]) -> None:
    finder = _MaskFinder()
    mask_roots = [m for m in (root / "mask", root / "masks") if m.is_dir()]
    _collect(root / "good", SPLIT_ALL, "good", None, [], finder, records, problems)
    defect_dir = root / "defect"
    loose = [m / "defect" for m in mask_roots] + mask_roots
    for p in _visible_children(defect_dir):
        if p.is_dir():
            typed = [m / p.name for m in mask_roots] + [m / "defect" / p.name for m in mask_roots]
            _collect(p, SPLIT_ALL, "defect", p.name, typed + loose, finder, records, problems)
    # Images directly in defect/ (no type); sub-folders were handled above.
    for p in _visible_children(defect_dir):
        if p.is_file():
            if _is_image(p):
                mask = finder.find(p.stem, loose)
                records.append(ImageRecord(p, SPLIT_ALL, "defect", None, mask))
            else:
                problems.append(Problem(p, "unsupported", f"{p}: not an image file, ignored"))
    for m in mask_roots:
        _unsupported_in(m, problems)
        for sub in _visible_children(m):
            if sub.is_dir():
                _unsupported_in(sub, problems)


def _validate(records: list[ImageRecord], problems: list[Problem]) -> list[ImageRecord]:
    """Open every file; drop unusable images, clear unusable masks, report everything.

    A defect image whose mask is missing, unreadable or of the wrong size is kept with
    ``mask_path=None``: its image-level label is still worth having in a few-shot dataset.
    """
    kept: list[ImageRecord] = []
    first_by_hash: dict[str, Path] = {}
    for rec in records:
        path = rec.path
        try:
            if path.stat().st_size == 0:
                problems.append(Problem(path, "empty", f"{path}: file is empty (0 bytes)"))
                continue
            digest = sha256_file(path)
        except OSError as exc:
            problems.append(Problem(path, "unreadable", f"{path}: cannot read file ({exc})"))
            continue
        if digest in first_by_hash:
            first = first_by_hash[digest]
            problems.append(
                Problem(path, "duplicate", f"{path}: same content as {first}, kept only the first")
            )
            continue
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            problems.append(Problem(path, "unreadable", str(exc)))
            continue
        first_by_hash[digest] = path
        if rec.label == "defect":
            rec = _validate_mask(rec, image.shape[:2], problems)
        kept.append(rec)
    return kept


def _validate_mask(
    rec: ImageRecord, shape: tuple[int, int], problems: list[Problem]
) -> ImageRecord:
    """Check a defect record's mask; returns the record, with ``mask_path=None`` if unusable."""
    if rec.mask_path is None:
        problems.append(
            Problem(
                rec.path,
                "missing_mask",
                f"{rec.path}: defect image has no mask; usable for image-level metrics only",
            )
        )
        return rec
    try:
        mask = load_mask(rec.mask_path)
    except ImageLoadError as exc:
        problems.append(Problem(rec.mask_path, "mask_unreadable", f"{exc} (image {rec.path})"))
        return replace(rec, mask_path=None)
    if mask.shape != tuple(shape):
        problems.append(
            Problem(
                rec.mask_path,
                "mask_size",
                f"{rec.mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but the image "
                f"{rec.path} is {shape[0]}x{shape[1]}",
            )
        )
        return replace(rec, mask_path=None)
    return rec


def discover(root: str | os.PathLike[str], validate: bool = True) -> DatasetIndex:
    """Index a dataset folder (layout detected automatically).

    With ``validate`` every image and mask is fully decoded, which is what catches truncated
    files; bad files move from ``records`` to ``problems`` and discovery carries on. Without it
    only the folder structure is read (fast; for previews). Raises :class:`DatasetError` when the
    folder is missing or matches neither layout.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"{root_path}: folder not found")
    layout = _detect_layout(root_path)
    records: list[ImageRecord] = []
    problems: list[Problem] = []
    if layout == "mvtec":
        _discover_mvtec(root_path, records, problems)
    else:
        _discover_flat(root_path, records, problems)
    if validate:
        records = _validate(records, problems)
    return DatasetIndex(root=root_path, layout=layout, records=records, problems=problems)

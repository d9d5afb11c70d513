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
import io
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageFile

from engine.image_limits import (
    HeaderError,
    ImageHeader,
    limit_reason,
    max_pixels,
    read_header,
)

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
    "degenerate",  # a good image too small or too flat to train on (see degenerate_reason)
    "mask_not_binary",  # a warning: the mask still loads, by the documented rule
]

# Truncated files must fail loudly; a half-decoded image would silently poison a memory bank.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DatasetError(ValueError):
    """The folder is not a dataset Kensa understands (the message says what was expected)."""


class ImageLoadError(ValueError):
    """One file could not be turned into pixels; the message names the file and the reason.

    ``path`` and ``reason`` (the message without the path) are set when engine.data raised it,
    so a caller that shows its own name for the file (an import's entry name rather than a temp
    file) can reuse the reason.
    """

    def __init__(self, message: str, *, path: Path | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = path
        self.reason = reason if reason is not None else message


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

#: Elements converted per step in :func:`_to_uint8`: a few float64 temporaries of 2 MB each,
#: whatever the image size (a full-size float64 copy of a 40 MP RGB image would be 960 MB).
_CHUNK_ELEMENTS = 1 << 18


def _fail(path: Path, reason: str) -> ImageLoadError:
    return ImageLoadError(f"{path}: {reason}", path=path, reason=reason)


def _checked_header(path: Path, data: bytes | None = None) -> ImageHeader:
    """The file's header, after the pixel limit; raises :class:`ImageLoadError` naming ``path``.

    With ``data`` (the file's bytes, already read) the header comes from those bytes.
    Also keeps Pillow's own decompression-bomb limit equal to Kensa's, so any other Pillow use
    in the process refuses the same files instead of surfacing its own exception type.
    """
    try:
        header = read_header(path if data is None else io.BytesIO(data))
    except HeaderError as exc:
        raise _fail(path, str(exc)) from None
    except OSError as exc:
        raise _fail(path, f"cannot read file ({exc.strerror or exc})") from exc
    Image.MAX_IMAGE_PIXELS = max_pixels()
    reason = limit_reason(header)
    if reason is not None:
        raise _fail(path, reason)
    return header


def _read_tiff(path: Path | io.BytesIO) -> np.ndarray:
    """First page of a TIFF in its native dtype, channels last (later pages are never read)."""
    arr = np.asarray(tifffile.imread(path, key=0))
    # Planar (separate) RGB comes back as C x H x W.
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_pil(path: Path | io.BytesIO, header: ImageHeader, palette_as_indices: bool
              ) -> tuple[np.ndarray, bool]:
    """Decode fully with Pillow (``load()`` raises on truncated data), keeping the native dtype.

    Pillow may only use the decoder the header named: a file never reaches Pillow's other
    plugins (PSD, EPS, ...) just because its bytes look like them. Returns the array and
    whether it holds palette indices. Animated PNGs give their first frame.
    """
    with Image.open(path, formats=[header.format]) as im:
        if im.size != (header.width, header.height):
            raise ValueError(f"decoder size {im.size} differs from the header's")
        im.load()
        mode = im.mode
        if mode in ("P", "PA") and palette_as_indices:
            return np.asarray(im.getchannel(0) if mode == "PA" else im), True
        if mode in ("1", "L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
            arr = np.asarray(im)
            return (arr.astype(np.uint16, copy=False) if mode.startswith("I;16") else arr), False
        # Palette, CMYK, YCbCr, LAB, HSV ...: Pillow knows how to get to RGB(A).
        has_alpha = mode in ("PA", "RGBa", "La") or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB")), False


def _read_native_tagged(
    path: str | os.PathLike[str], palette_as_indices: bool = False, data: bytes | None = None
) -> tuple[np.ndarray, bool]:
    """Decode any supported file to (array in its own dtype, is palette), or raise.

    The header is checked against the pixel limit before a single pixel is decoded; every
    failure is an :class:`ImageLoadError` whose message starts with the path. With ``data``
    the pixels come from those bytes (the file's content, read once), not from the file.
    """
    p = Path(path)
    if data is None:
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise _fail(p, "file not found") from None
        except OSError as exc:
            raise _fail(p, f"cannot read file ({exc.strerror or exc})") from exc
        if p.is_dir():
            raise _fail(p, "is a folder, not an image file")
    else:
        size = len(data)
    if size == 0:
        raise _fail(p, "file is empty (0 bytes)")
    header = _checked_header(p, data)
    source: Path | io.BytesIO = p if data is None else io.BytesIO(data)
    try:
        if header.format == "TIFF":
            arr, palette = _read_tiff(source), False
        else:
            arr, palette = _read_pil(source, header, palette_as_indices)
    except MemoryError:
        raise _fail(
            p, f"not enough memory to decode {header.width}x{header.height} pixels"
        ) from None
    except Exception as exc:  # decoders raise many unrelated types for bad bytes
        raise _fail(p, f"cannot decode image ({str(exc).strip() or 'corrupt data'})") from exc
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise _fail(p, f"unsupported image shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
        raise _fail(p, f"unsupported number of channels ({arr.shape[2]})")
    return arr, palette


def _read_native(path: str | os.PathLike[str], palette_as_indices: bool = False) -> np.ndarray:
    """Decode any supported file to an array in its own dtype, or raise :class:`ImageLoadError`."""
    return _read_native_tagged(path, palette_as_indices)[0]


def image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Format and size of an image file without decoding it, within the pixel limit.

    For callers that need only the size (the database's width/height columns) or want to
    refuse a file cheaply; raises :class:`ImageLoadError` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise _fail(p, "file not found" if not p.exists() else "not a regular file")
    return _checked_header(p)


def verify_image(path: str | os.PathLike[str]) -> tuple[ImageHeader, int]:
    """Decode ``path`` fully (header and pixel limit first): its header and pixels' byte count.

    Import calls this on every file before keeping it: a file that starts with a PNG signature
    but does not decode must never be stored. The byte count (native dtype, first frame) lets
    the caller spot files far bigger than their pixels. Raises :class:`ImageLoadError`.
    """
    header = image_header(path)
    arr = _read_native(path)
    _to_uint8(arr, Path(path))  # what load_image does next: refuses all-NaN images, for one
    return header, int(arr.nbytes)


def _rows_mapped(arr: np.ndarray, convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``convert`` applied to blocks of rows into a uint8 array, so scratch stays small."""
    out = np.empty(arr.shape, np.uint8)
    per_row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    for start in range(0, arr.shape[0], step):
        out[start : start + step] = convert(arr[start : start + step])
    return out


def _finite_range(arr: np.ndarray, path: Path) -> tuple[float, float]:
    """Min and max of a float image with NaN and +-inf counted as 0 (as they are converted)."""
    lo, hi, any_finite, any_bad = np.inf, -np.inf, False, False
    per_row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    for start in range(0, arr.shape[0], step):
        block = arr[start : start + step]
        finite = np.isfinite(block)
        if finite.all():
            lo, hi, any_finite = min(lo, float(block.min())), max(hi, float(block.max())), True
            continue
        any_bad = True
        if finite.any():
            values = block[finite]
            lo, hi, any_finite = min(lo, float(values.min())), max(hi, float(values.max())), True
    if not any_finite:
        raise _fail(path, "holds no finite pixel values (all NaN or infinite)")
    if any_bad:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return lo, hi


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Scale any dtype to uint8 without clipping.

    Integers are scaled by their dtype's full range (16-bit: ``v / 257``), not stretched per
    image: a per-image stretch would erase brightness differences, which can be the defect, and
    would make two shots of the same part look different. Integer data wider than 16 bit whose
    values fit 16 bit (Pillow's mode ``I`` for 16-bit files) is treated as 16-bit. Floats in
    [0, 1] are scaled by 255; other float ranges have no canonical scale and are min-max
    stretched. NaN and infinite values count as 0 (depth maps mark missing pixels that way); an
    image with no finite value at all is refused. Conversion runs in blocks of rows, so no
    full-size float64 copy is ever made.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = float(np.iinfo(arr.dtype).max)
        if arr.dtype.itemsize > 2 and max(int(arr.max(initial=0)), 0) <= 65535:
            top = 65535.0
        elif arr.dtype == np.int8:
            top = 127.0
        scale = 255.0 / top
        return _rows_mapped(
            arr,
            lambda b: np.rint(np.clip(b.astype(np.float64), 0, None) * scale).astype(np.uint8),
        )
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = _finite_range(arr, path)

        def clean(block: np.ndarray) -> np.ndarray:
            return np.nan_to_num(block.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)

        if lo >= 0.0 and hi <= 1.0:
            return _rows_mapped(arr, lambda b: np.rint(clean(b) * 255.0).astype(np.uint8))
        if hi == lo:
            return np.zeros(arr.shape, np.uint8)
        scale = 255.0 / (hi - lo)
        return _rows_mapped(arr, lambda b: np.rint((clean(b) - lo) * scale).astype(np.uint8))
    raise _fail(path, f"unsupported pixel type {arr.dtype}")


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Any supported file as ``H x W x 3`` uint8 RGB.

    Grayscale is repeated to three channels; palette images are expanded; alpha is dropped, not
    composited, because alpha in inspection images is almost always meaningless and compositing
    would hide pixels under transparency. EXIF orientation is not applied: masks are drawn on the
    stored pixel grid. Only the first frame of an animated PNG and the first page of a multi-page
    TIFF are read. Empty, truncated, corrupt or over-limit files (see
    :mod:`engine.image_limits`) raise :class:`ImageLoadError`.
    """
    p = Path(path)
    return _as_rgb(_to_uint8(_read_native(p), p))


def load_image_and_sha256(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """:func:`load_image` plus the sha256 of exactly the bytes that were decoded.

    The file is read once; hashing it and decoding it in two reads would let a file rewritten
    in between train with new pixels under the old digest (the history would then lie about
    what a model saw). Same errors as :func:`load_image`.
    """
    p = Path(path)
    if p.is_dir():
        raise _fail(p, "is a folder, not an image file")
    if p.is_file() and p.stat().st_size > 0:
        _checked_header(p)  # an over-limit file is refused before its bytes are read
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise _fail(p, "file not found") from None
    except OSError as exc:
        raise _fail(p, f"cannot read file ({exc.strerror or exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    arr = _to_uint8(_read_native_tagged(p, data=data)[0], p)
    return _as_rgb(arr), digest


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    """Any uint8 H x W (x C) array as contiguous H x W x 3 (alpha dropped, gray repeated)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels == 4:  # RGB + alpha
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- masks and shots

#: A mask pixel is defect when its value is above this on the 8-bit scale (half the range).
MASK_THRESHOLD = 127
#: A mask is reported as not binary when more than this share of its pixels is neither 0 nor
#: its main defect value: soft edges of a resized mask stay below it, a 1-2 background does not.
MASK_GREY_SHARE = 0.01
#: Training images with a side below this many pixels are refused (see degenerate_reason).
MIN_TRAIN_SIDE = 32
#: Training images whose grey-level standard deviation is below this are refused as flat.
MIN_TRAIN_STD = 1.0


def _span(values: np.ndarray) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _binarize(arr: np.ndarray, palette: bool, path: Path) -> tuple[np.ndarray, str | None]:
    """The mask rule (see :func:`load_mask_with_warning`): bool mask and a warning or None."""
    if palette:
        return (arr[:, :, 0] if arr.ndim == 3 else arr) != 0, None
    if arr.ndim == 3:
        colour = arr[:, :, :1] if arr.shape[2] in (1, 2) else arr[:, :, :3]
        arr = colour.max(axis=2)  # a red or green annotation counts like a white one
    if arr.dtype == np.bool_:
        return arr.copy(), None
    if np.issubdtype(arr.dtype, np.integer) and int(arr.min()) == 0 and int(arr.max()) == 1:
        return arr == 1, None  # a 0/1 label map: 1 is defect, whatever the bit depth
    u8 = _to_uint8(arr, path)
    counts = np.bincount(u8.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    background = present[present <= MASK_THRESHOLD]
    defect = present[present > MASK_THRESHOLD]
    mask = u8 > MASK_THRESHOLD
    clean = int(counts[0]) + (int(counts[MASK_THRESHOLD + 1:].max()) if defect.size else 0)
    if 1 - clean / max(1, u8.size) <= MASK_GREY_SHARE:
        return mask, None  # binary, or binary with soft (resized, anti-aliased) edges
    parts = []
    if background.size:
        parts.append(f"values {_span(background)} treated as background")
    parts.append(f"values {_span(defect)} as defect" if defect.size else "no defect pixel")
    warning = (
        f"{path}: mask is not binary ({', '.join(parts)}) by the rule: a pixel is defect when "
        f"its value is above {MASK_THRESHOLD} on the 8-bit scale (16-bit masks scaled first); "
        "save masks as 0 = good, 255 = defect"
    )
    return mask, warning


def load_mask_with_warning(
    path: str | os.PathLike[str], shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, str | None]:
    """Mask file as ``H x W`` bool, plus a warning when the file is not a clean binary mask.

    The rule, one for every format: a pixel is defect when its value is above 127 on the 8-bit
    scale (16-bit masks are scaled by ``v / 257`` first, float masks in [0, 1] by 255), i.e.
    above half the range. Colour masks use the brightest channel, so a red annotation counts.
    Two exceptions keep label maps working: palette masks are read as palette indices (index 0
    is background whatever its colour, any other index is defect), and a mask whose values are
    exactly 0 and 1 is a 0/1 label map (1 is defect). Alpha channels are ignored.

    A mask where more than :data:`MASK_GREY_SHARE` of the pixels are neither 0 nor its main
    defect value (a JPEG-compressed mask, a background of 1-2 instead of 0) still loads by the
    rule, with a warning naming the file and the values seen: such a background once counted as
    defect and wrecked the pixel metrics. Soft edges of a resized mask are no reason to warn.
    With ``shape=(H, W)`` a mask of a different size raises :class:`ImageLoadError` naming both
    sizes.
    """
    p = Path(path)
    arr, palette = _read_native_tagged(p, palette_as_indices=True)
    mask, warning = _binarize(arr, palette, p)
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise _fail(
            p,
            f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW) "
            f"but the image is {shape[0]}x{shape[1]}",
        )
    return mask, warning


def load_mask(path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Mask file as ``H x W`` bool by the rule of :func:`load_mask_with_warning`."""
    return load_mask_with_warning(path, shape)[0]


def degenerate_reason(image: np.ndarray) -> str | None:
    """Why ``image`` cannot be a good-part training photo, or None when it can.

    One 1x1 or single-colour training image once made blank frames score as "good" with
    confidence 1.00: a flat patch sits close to every flat test patch, so nothing looks novel.
    Refused are images with a side below :data:`MIN_TRAIN_SIDE` (32 px: no real inspection
    photo is that small, and the models upscale it into pure interpolation) and images whose
    grey-level standard deviation is below :data:`MIN_TRAIN_STD` (1.0 of 255: camera noise
    alone gives more, so only blank, flat-filled or lens-cap frames fall below). The standard
    deviation is the largest over the colour channels, so colour-only texture counts. The
    message has no path; callers prefix the file name.
    """
    h, w = image.shape[:2]
    if min(h, w) < MIN_TRAIN_SIDE:
        return (
            f"is only {w}x{h} pixels: a good-part photo needs at least {MIN_TRAIN_SIDE} pixels "
            "on each side; remove it"
        )
    _, std = cv2.meanStdDev(np.ascontiguousarray(image))
    spread = float(np.max(std))
    if spread < MIN_TRAIN_STD:
        return (
            f"is a single flat colour (std {spread:.1f}): a good-part photo has texture; "
            "remove it"
        )
    return None


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
    Good images that :func:`degenerate_reason` refuses (tiny or flat) are dropped with a
    ``degenerate`` problem, since any good image may become a training shot; a flat *defect*
    image (a blank frame labelled bad) is a legitimate test case and is kept.
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
        if rec.label == "good":
            reason = degenerate_reason(image)
            if reason is not None:  # a good image is a training candidate: keep it out
                problems.append(Problem(path, "degenerate", f"{path}: {reason}"))
                continue
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
        mask, warning = load_mask_with_warning(rec.mask_path)
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
    if warning is not None:
        problems.append(Problem(rec.mask_path, "mask_not_binary", f"{warning} (image {rec.path})"))
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

"""Image size from the file header, and the one pixel limit every decode obeys.

A 140 KB PNG can claim 12000 x 12000 pixels and cost gigabytes once decoded; a tiny file can
claim 20000 x 20000 and crash a decoder. The only safe moment to refuse such a file is *before*
decoding, so this module reads width and height from the header alone (PNG ``IHDR``, the JPEG
``SOFn`` segment, the BMP info header, the first TIFF page's tags) and compares them with a
single limit, ``KENSA_MAX_MEGAPIXELS``. ``engine.data`` calls it before every decode, so import
validation, training and scoring all inherit the same rule.

The default, 40 megapixels, keeps a 26 MP industrial camera (5120 x 5120) and a 36 MP
full-frame camera inside the limit while refusing the 144 MP (12000 x 12000) files that cost
5.65 GB in scoring. At 40 MP a decoded 8-bit RGB image is 120 MB, a 16-bit RGBA TIFF 320 MB;
the models resize to a few hundred pixels anyway, so larger files buy no accuracy.

Only the first frame or page of an animated PNG or a multi-page TIFF is ever decoded, so the
number of frames does not change the cost and is not limited here.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import tifffile

#: Name of the environment variable holding the pixel limit, in megapixels (10**6 pixels).
MAX_MEGAPIXELS_ENV = "KENSA_MAX_MEGAPIXELS"
#: Default pixel limit in megapixels; see the module docstring for the reasoning.
DEFAULT_MAX_MEGAPIXELS = 40.0
#: Most samples per pixel a TIFF may declare: gray, gray + alpha, RGB, RGBA.
MAX_SAMPLES_PER_PIXEL = 4

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Signatures of formats people do bring, so the refusal can say what the file really is.
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "WebP or another RIFF"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "zip archive"),
)
#: JPEG markers SOF0..SOF15 that carry the frame size (C4, C8 and CC are other segments).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field (TEM, RST0-7).
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])


class HeaderError(ValueError):
    """The header cannot be read or names an unsupported format; the message is the reason."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str  # "PNG" | "JPEG" | "BMP" | "TIFF"
    width: int
    height: int
    #: Samples per pixel when the header states it cheaply (TIFF), else None.
    samples: int | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def megapixels(self) -> float:
        return self.pixels / 1e6


def max_megapixels() -> float:
    """The pixel limit in megapixels: ``KENSA_MAX_MEGAPIXELS`` or 40.

    Read on every call, so a deployment (or a test) can change it without a restart. A value
    that is not a positive number is a configuration mistake and raises ``ValueError`` naming
    the variable rather than silently falling back to the default.
    """
    raw = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MEGAPIXELS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"{MAX_MEGAPIXELS_ENV}={raw!r} is not a positive number of megapixels; "
            f"unset it for the default ({DEFAULT_MAX_MEGAPIXELS:g})"
        )
    return value


def max_pixels() -> int:
    """The pixel limit as a pixel count (what Pillow's ``MAX_IMAGE_PIXELS`` is set to)."""
    return int(max_megapixels() * 1e6)


def read_header(path: str | os.PathLike[str] | BinaryIO) -> ImageHeader:
    """Format and size of an image file from its first bytes; raises :class:`HeaderError`.

    The format comes from the content, not the name, because cameras and scripts write TIFFs
    named ``.png``. Reads at most a few kilobytes for PNG, BMP and JPEG (JPEG walks the segment
    lengths up to the frame header) and only the first IFD of a TIFF. ``path`` may also be a
    seekable binary stream (bytes already read and hashed, see ``engine.data``).
    """
    if not isinstance(path, str | os.PathLike):
        path.seek(0)
        return _header_of(path)
    with open(Path(path), "rb") as fh:
        return _header_of(fh)


def _header_of(fh: BinaryIO) -> ImageHeader:
    """:func:`read_header` on an open binary stream positioned at its start."""
    head = fh.read(32)
    if head.startswith(_TIFF_MAGIC):
        fh.seek(0)
        return _tiff_header(fh)
    if head.startswith(_PNG_MAGIC):
        return _png_header(head)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_header(fh)
    if head.startswith(b"BM"):
        return _bmp_header(head)
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            raise HeaderError(f"the file is a {name}, not a PNG, JPEG, BMP or TIFF image")
    raise HeaderError("the content is not a PNG, JPEG, BMP or TIFF image")


def limit_reason(header: ImageHeader) -> str | None:
    """Why the header alone rules the file out (too many pixels or samples), else None."""
    limit = max_megapixels()
    if header.pixels > limit * 1e6:
        return (
            f"{header.width}x{header.height} pixels ({header.megapixels:.1f} megapixels) is above "
            f"the limit of {limit:g} megapixels; refused before decoding. Shrink the image, or "
            f"raise the limit with the environment variable {MAX_MEGAPIXELS_ENV}"
        )
    if header.samples is not None and header.samples > MAX_SAMPLES_PER_PIXEL:
        return (
            f"the TIFF declares {header.samples} samples per pixel; Kensa reads gray, gray + "
            "alpha, RGB or RGBA (at most 4)"
        )
    return None


def _checked_size(fmt: str, width: int, height: int, samples: int | None = None) -> ImageHeader:
    if width <= 0 or height <= 0:
        raise HeaderError(f"the {fmt} header gives an empty size ({width}x{height})")
    return ImageHeader(fmt, width, height, samples)


def _png_header(head: bytes) -> ImageHeader:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise HeaderError("PNG header is damaged (no IHDR chunk first)")
    width, height = struct.unpack(">II", head[16:24])
    return _checked_size("PNG", width, height)


def _bmp_header(head: bytes) -> ImageHeader:
    if len(head) < 26:
        raise HeaderError("BMP header is cut short")
    (info_size,) = struct.unpack("<I", head[14:18])
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", head[18:22])
    else:
        width, height = struct.unpack("<ii", head[18:26])
    return _checked_size("BMP", width, abs(height))  # negative height: rows stored top-down


def _jpeg_header(fh: BinaryIO) -> ImageHeader:
    """Walk the JPEG segments after SOI until a frame header (SOFn) gives the size."""
    fh.seek(2)
    while True:
        byte = fh.read(1)
        if not byte:
            raise HeaderError("JPEG ends before its frame header (truncated file?)")
        if byte != b"\xff":
            raise HeaderError("JPEG segment structure is damaged")
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            raise HeaderError("JPEG ends before its frame header (truncated file?)")
        code = marker[0]
        if code in _JPEG_STANDALONE:
            continue
        if code in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise HeaderError("JPEG has no frame header before its image data")
        raw_length = fh.read(2)
        if len(raw_length) < 2:
            raise HeaderError("JPEG ends inside a segment header (truncated file?)")
        (length,) = struct.unpack(">H", raw_length)
        if length < 2:
            raise HeaderError("JPEG segment structure is damaged")
        if code in _JPEG_SOF:
            frame = fh.read(5)
            if len(frame) < 5:
                raise HeaderError("JPEG frame header is cut short")
            height, width = struct.unpack(">HH", frame[1:5])
            if height == 0:
                raise HeaderError("JPEG declares its height later in the file (DNL); unsupported")
            return _checked_size("JPEG", width, height)
        fh.seek(length - 2, os.SEEK_CUR)


def _tiff_header(path: Path | BinaryIO) -> ImageHeader:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            width, height = int(page.imagewidth), int(page.imagelength)
            samples = int(page.samplesperpixel)
    except Exception as exc:  # tifffile raises several types for damaged headers
        raise HeaderError(f"TIFF header cannot be read ({str(exc).strip() or 'corrupt data'})"
                          ) from exc
    return _checked_size("TIFF", width, height, samples)

"""A generated corpus of awkward and hostile image files (issue 8), for engine and import tests.

Every file is made on the fly in a temp folder, in milliseconds and a few hundred KB at most:
the decompression bombs are *headers* that claim tens of thousands of pixels over tiny payloads,
plus one real, valid 12000 x 12000 PNG streamed through zlib (about 140 KB, like the report).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

#: Size of the ordinary images of the corpus (H x W).
H, W = 48, 64


def texture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """Random-ish RGB texture: far from flat, never degenerate."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width x height`` 8-bit gray, then a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(
        b"IEND", b""
    )


def png_bomb(side: int) -> bytes:
    """A *valid* ``side x side`` all-black gray PNG, compressed row by row (never in memory)."""
    comp = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def tiff_header_only(width: int, height: int, bits: int = 16) -> bytes:
    """A little-endian TIFF whose one deflate strip claims ``width x height`` gray pixels."""
    strip = zlib.compress(bytes(256))
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 8), (262, 3, 1),
        (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(strip)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HxxI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    out += struct.pack("<I", 0) + strip
    return bytes(out)


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write every case into ``folder``; returns name -> path (names are the file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        files[name] = folder / name

    def save(name: str, image: Image.Image, **kwargs: object) -> None:
        image.save(folder / name, **kwargs)
        files[name] = folder / name

    rgb = Image.fromarray(texture(1))
    save("ok.png", rgb)
    ok = (folder / "ok.png").read_bytes()
    put("truncated.png", ok[: len(ok) // 2])
    put("empty.jpg", b"")
    save("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    save("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    gray16 = (texture(2)[:, :, 0].astype(np.uint16) * 257)
    save("gray16.png", Image.fromarray(gray16))
    tifffile.imwrite(folder / "rgb16.tif", texture(3).astype(np.uint16) * 257, photometric="rgb")
    files["rgb16.tif"] = folder / "rgb16.tif"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    save("exif_rotated.jpg", rgb, exif=exif, quality=95)
    frames = [Image.fromarray(texture(10 + i)) for i in range(3)]
    save("animated.gif", frames[0].convert("P"), save_all=True, append_images=[
        f.convert("P") for f in frames[1:]])
    save("animated.png", frames[0], save_all=True, append_images=frames[1:])
    with tifffile.TiffWriter(folder / "multipage.tif") as tw:
        for i in range(3):
            tw.write(texture(20 + i))
    files["multipage.tif"] = folder / "multipage.tif"
    nan = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    nan[:10, :10] = np.nan
    tifffile.imwrite(folder / "nan.tif", nan)
    files["nan.tif"] = folder / "nan.tif"
    tifffile.imwrite(folder / "allnan.tif", np.full((H, W), np.nan, np.float32))
    files["allnan.tif"] = folder / "allnan.tif"
    put("bomb.png", png_bomb(12000))  # valid: 144 MP of black in ~140 KB
    put("huge_header.png", png_header_only(20000, 20000))
    put("tiff_named.png", tiff_header_only(20000, 20000))  # a 16-bit TIFF named .png
    save("one_px.png", Image.new("RGB", (1, 1), (120, 130, 140)))
    save("flat.png", Image.new("RGB", (W, H), (90, 90, 90)))
    mask = np.random.default_rng(4).integers(1, 3, (H, W), dtype=np.uint8)  # background 1-2
    mask[10:20, 30:50] = 255
    save("mask_bg12.png", Image.fromarray(mask))
    # A 64x64 IHDR followed by garbage: starts like a PNG, does not decode.
    put("blob.png", png_header_only(64, 64)[:33] + np.random.default_rng(5).bytes(200_000))
    # A valid small PNG with megabytes of something else after it.
    put("junk_after.png", ok + np.random.default_rng(6).bytes(6 * 1024**2))
    return files

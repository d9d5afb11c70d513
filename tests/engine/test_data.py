"""Dataset discovery, validation and loading on small generated files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from engine.data import (
    IMAGE_SUFFIXES,
    DatasetError,
    DatasetIndex,
    ImageLoadError,
    ImageRecord,
    discover,
    load_image,
    load_mask,
    sha256_file,
)

H, W = 32, 40  # the smallest side a good training image may have is 32 px


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _mask(h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[5:10, 5:12] = 255
    return m


# --------------------------------------------------------------------------- load_image


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = _rgb(0)
    out = load_image(_save(tmp_path / "a.png", arr))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, arr)


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    gray = _rgb(1)[:, :, 0]
    out = load_image(_save(tmp_path / "g.png", gray))
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(2), np.full((H, W), 7, np.uint8)])
    out = load_image(_save(tmp_path / "a.png", rgba))
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_palette_png_expands_to_rgb(tmp_path: Path) -> None:
    im = Image.fromarray(_rgb(3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    im.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))


def test_16bit_tiff_scales_to_full_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    tifffile.imwrite(tmp_path / "r.tif", ramp)
    out = load_image(tmp_path / "r.tif")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    # Scaled by the 16-bit range (v / 257), not clipped: order and mid-grey are preserved.
    np.testing.assert_array_equal(out[:, :, 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert np.all(np.diff(out[:, :, 0].ravel().astype(int)) >= 0)


def test_16bit_rgb_tiff_and_png(tmp_path: Path) -> None:
    rgb16 = _rgb(4).astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "c.tiff", rgb16, photometric="rgb")
    np.testing.assert_array_equal(load_image(tmp_path / "c.tiff"), _rgb(4))
    gray16 = rgb16[:, :, 0]
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png")[:, :, 0], _rgb(4)[:, :, 0])


def test_float_tiff(tmp_path: Path) -> None:
    unit = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    tifffile.imwrite(tmp_path / "u.tif", unit)
    out = load_image(tmp_path / "u.tif")
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    wide = unit * 1000 - 200  # no canonical range: stretched
    tifffile.imwrite(tmp_path / "w.tif", wide)
    out = load_image(tmp_path / "w.tif")
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tif"])
def test_other_formats(tmp_path: Path, suffix: str) -> None:
    arr = _rgb(5)
    out = load_image(_save(tmp_path / f"x{suffix}", arr))
    assert out.shape == (H, W, 3)
    if suffix != ".jpg":
        np.testing.assert_array_equal(out, arr)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"e\.png.*empty"):
        load_image(tmp_path / "e.png")


def test_corrupt_bytes_named_png(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"this is not a png" * 20)
    with pytest.raises(ImageLoadError, match=r"bad\.png.*not a PNG, JPEG, BMP or TIFF"):
        load_image(tmp_path / "bad.png")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    src = _save(tmp_path / f"full{suffix}", _rgb(6))
    data = src.read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=f"cut\\{suffix}"):
        load_image(tmp_path / f"cut{suffix}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="nope.png.*not found"):
        load_image(tmp_path / "nope.png")


# --------------------------------------------------------------------------- load_mask


def test_load_mask_above_half_range_is_defect(tmp_path: Path) -> None:
    m = _mask()
    m[0, 0] = 1  # low values are background by the > 127 rule
    m[0, 1] = 128
    out = load_mask(_save(tmp_path / "m.png", m))
    assert out.dtype == np.bool_ and out.shape == (H, W)
    assert out.sum() == 5 * 7 + 1 and out[0, 1] and not out[0, 0]


def test_load_mask_rgb_and_size_check(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[1, 2, 1] = 200
    path = _save(tmp_path / "m.png", rgb)
    assert load_mask(path, (H, W)).sum() == 1
    with pytest.raises(ImageLoadError, match=rf"m\.png.*{H}x{W}.*{H + 1}x{W}"):
        load_mask(path, (H + 1, W))


# --------------------------------------------------------------------------- discovery


def _mvtec(root: Path) -> Path:
    for i in range(3):
        _save(root / "train" / "good" / f"{i:03d}.png", _rgb(10 + i))
    _save(root / "test" / "good" / "000.png", _rgb(20))
    _save(root / "test" / "scratch" / "000.png", _rgb(21))
    _save(root / "test" / "scratch" / "001.png", _rgb(22))
    _save(root / "ground_truth" / "scratch" / "000_mask.png", _mask())
    _save(root / "ground_truth" / "scratch" / "001_mask.png", _mask())
    return root


def test_discover_mvtec(tmp_path: Path) -> None:
    idx = discover(_mvtec(tmp_path / "bottle"))
    assert idx.layout == "mvtec" and idx.problems == []
    assert idx.counts() == {"train": {"good": 3, "defect": 0}, "test": {"good": 1, "defect": 2}}
    json.dumps(idx.counts())
    assert len(idx.select(split="train")) == 3
    defects = idx.select(label="defect")
    assert {r.defect_type for r in defects} == {"scratch"}
    assert all(r.mask_path is not None and r.mask_path.name.endswith("_mask.png") for r in defects)
    assert idx.select(split="test", label="good")[0].mask_path is None
    assert idx.defect_types() == {"scratch": 2}


def test_discover_flat_with_types_and_lenient_mask_names(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _save(root / "good" / "g1.jpg", _rgb(30))
    _save(root / "good" / "g2.bmp", _rgb(31))
    _save(root / "defect" / "d1.png", _rgb(32))
    _save(root / "defect" / "dent" / "d2.png", _rgb(33))
    _save(root / "defect" / "crack" / "d3.png", _rgb(34))
    _save(root / "mask" / "defect" / "d1.png", _mask())  # <stem>.png
    _save(root / "mask" / "dent" / "d2_mask.bmp", _mask())  # <stem>_mask.<other suffix>
    _save(root / "mask" / "defect" / "d3_mask.png", _mask())  # typed image, untyped mask dir
    idx = discover(root)
    assert idx.layout == "flat" and idx.problems == []
    assert {r.split for r in idx.records} == {"all"}
    assert idx.counts() == {"all": {"good": 2, "defect": 3}}
    by_name = {r.path.name: r for r in idx.records}
    assert by_name["d1.png"].defect_type is None
    assert by_name["d1.png"].mask_path == root / "mask" / "defect" / "d1.png"
    assert by_name["d2.png"].defect_type == "dent"
    assert by_name["d2.png"].mask_path == root / "mask" / "dent" / "d2_mask.bmp"
    assert by_name["d3.png"].mask_path == root / "mask" / "defect" / "d3_mask.png"


def test_unknown_layout_raises(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError, match="train/good.*good/"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "missing")
    assert issubclass(DatasetError, ValueError)


def test_every_problem_kind_is_reported_and_discovery_continues(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "ds")
    train = root / "train" / "good"
    (train / "corrupt.png").write_bytes(b"\x89PNG garbage" * 10)
    (train / "empty.png").write_bytes(b"")
    jpg = _save(train / "whole.jpg", _rgb(40)).read_bytes()
    (train / "whole.jpg").unlink()
    (train / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (train / "copy.png").write_bytes((train / "000.png").read_bytes())
    (train / "notes.txt").write_text("hello")
    (train / ".DS_Store").write_bytes(b"junk")  # hidden files are not reported
    _save(root / "test" / "scratch" / "002.png", _rgb(41))  # no mask
    _save(root / "test" / "scratch" / "003.png", _rgb(42))
    _save(root / "ground_truth" / "scratch" / "003_mask.png", _mask(H + 2, W))
    _save(root / "test" / "scratch" / "004.png", _rgb(43))
    (root / "ground_truth" / "scratch" / "004_mask.png").write_bytes(b"broken")

    idx = discover(root)
    kinds = {(p.path.name, p.kind) for p in idx.problems}
    assert kinds == {
        ("corrupt.png", "unreadable"),
        ("empty.png", "empty"),
        ("cut.jpg", "unreadable"),
        ("copy.png", "duplicate"),
        ("notes.txt", "unsupported"),
        ("002.png", "missing_mask"),
        ("003_mask.png", "mask_size"),
        ("004_mask.png", "mask_unreadable"),
    }
    for p in idx.problems:
        assert str(p.path) in p.message
    dup = next(p for p in idx.problems if p.kind == "duplicate")
    assert "000.png" in dup.message  # names the copy that was kept
    size = next(p for p in idx.problems if p.kind == "mask_size")
    assert f"{H + 2}x{W}" in size.message and f"{H}x{W}" in size.message

    names = {r.path.name for r in idx.select(split="train")}
    assert names == {"000.png", "001.png", "002.png"}
    # Defect images with a missing / bad mask keep their image-level label, without a mask.
    test_defects = {r.path.name: r for r in idx.select(split="test", label="defect")}
    assert set(test_defects) == {"000.png", "001.png", "002.png", "003.png", "004.png"}
    for name in ("002.png", "003.png", "004.png"):
        assert test_defects[name].mask_path is None
    assert idx.problem_counts()["unreadable"] == 2


def test_without_validation_only_structure_is_read(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "ds")
    (root / "train" / "good" / "empty.png").write_bytes(b"")
    idx = discover(root, validate=False)
    assert len(idx.select(split="train")) == 4
    assert idx.problems == []


def test_select_and_records_api(tmp_path: Path) -> None:
    rec = ImageRecord(tmp_path / "a.png", "all", "good", None, None)
    idx = DatasetIndex(tmp_path, "flat", [rec], [])
    assert idx.select(split="all", label="good") == [rec]
    assert idx.select(label="defect") == []
    assert ".tiff" in IMAGE_SUFFIXES


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(tmp_path / "x.bin") == expected

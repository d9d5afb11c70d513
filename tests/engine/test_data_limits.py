"""Issue 8 on the engine side: pixel limit before decoding, degenerate shots, the mask rule.

Runs the generated bad-input corpus (tests/bad_inputs.py) through ``load_image``,
``load_mask`` and ``discover``: every case either loads correctly or raises an
``ImageLoadError`` / yields a ``Problem`` that names the file and the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.data import (
    MASK_THRESHOLD,
    ImageLoadError,
    _to_uint8,
    degenerate_reason,
    discover,
    image_header,
    load_image,
    load_mask,
    load_mask_with_warning,
)
from engine.image_limits import (
    DEFAULT_MAX_MEGAPIXELS,
    MAX_MEGAPIXELS_ENV,
    max_megapixels,
    read_header,
)
from tests.bad_inputs import H, W, png_bomb, png_header_only, texture, write_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_MEGAPIXELS_ENV, raising=False)


# --------------------------------------------------------------------------- the corpus

#: name -> regex the ImageLoadError message must match (after the file name).
REFUSED = {
    "truncated.png": r"cannot decode image .*truncated",
    "empty.jpg": r"file is empty \(0 bytes\)",
    "animated.gif": r"is a GIF, not a PNG, JPEG, BMP or TIFF",
    "allnan.tif": r"no finite pixel values",
    "bomb.png": r"12000x12000 pixels \(144\.0 megapixels\) is above the limit of 40 megapixels"
                r".*KENSA_MAX_MEGAPIXELS",
    "huge_header.png": r"20000x20000 pixels \(400\.0 megapixels\) is above the limit",
    "tiff_named.png": r"20000x20000 pixels .* is above the limit",
    "blob.png": r"cannot decode image",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_files_name_the_file_and_the_reason(corpus: dict[str, Path], name: str) -> None:
    path = corpus[name]
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert str(err.value).startswith(f"{path}: ")
    assert err.value.path == path
    assert str(err.value) == f"{path}: {err.value.reason}"  # reason alone, for import reports
    assert re.search(REFUSED[name], err.value.reason), str(err.value)
    with pytest.raises(ImageLoadError, match=REFUSED[name]):
        load_mask(path)  # masks go through the same gate


def test_awkward_but_valid_files_load_as_rgb_uint8(corpus: dict[str, Path]) -> None:
    ref = texture(1)
    for name in ("ok.png", "palette.png", "cmyk.jpg", "exif_rotated.jpg", "junk_after.png"):
        out = load_image(corpus[name])
        assert out.shape == (H, W, 3) and out.dtype == np.uint8, name
    np.testing.assert_array_equal(load_image(corpus["ok.png"]), ref)
    # CMYK converts back close to the original colours (JPEG is lossy).
    assert np.abs(load_image(corpus["cmyk.jpg"]).astype(int) - ref).mean() < 20
    # EXIF orientation is NOT applied: the stored grid is what masks are drawn on.
    assert load_image(corpus["exif_rotated.jpg"]).shape == (H, W, 3)
    # 16-bit: v / 257, so 257 * k comes back as k exactly.
    np.testing.assert_array_equal(load_image(corpus["gray16.png"])[:, :, 0], texture(2)[:, :, 0])
    np.testing.assert_array_equal(load_image(corpus["rgb16.tif"]), texture(3))
    # Animated PNG and multi-page TIFF: the first frame / page only.
    np.testing.assert_array_equal(load_image(corpus["animated.png"]), texture(10))
    np.testing.assert_array_equal(load_image(corpus["multipage.tif"]), texture(20))


def test_nan_tiff_reads_missing_values_as_zero(corpus: dict[str, Path]) -> None:
    out = load_image(corpus["nan.tif"])[:, :, 0]
    assert (out[:10, :10] == 0).all()
    ramp = np.linspace(0, 1, H * W).reshape(H, W)
    np.testing.assert_array_equal(out[10:, 10:], np.rint(ramp * 255).astype(np.uint8)[10:, 10:])


def test_degenerate_training_images(corpus: dict[str, Path]) -> None:
    one = degenerate_reason(load_image(corpus["one_px.png"]))
    assert one is not None and "1x1" in one and "at least 32" in one
    flat = degenerate_reason(load_image(corpus["flat.png"]))
    assert flat == (
        "is a single flat colour (std 0.0): a good-part photo has texture; remove it"
    )
    assert degenerate_reason(load_image(corpus["ok.png"])) is None
    # Texture in one colour channel only still counts as texture.
    colour_only = np.full((40, 40, 3), 100, np.uint8)
    colour_only[:, ::2, 2] = 110
    assert degenerate_reason(colour_only) is None
    # Faint camera noise (std ~2) is a real, if smooth, surface: kept.
    noisy = np.clip(np.random.default_rng(0).normal(128, 2, (64, 64, 3)), 0, 255)
    assert degenerate_reason(noisy.astype(np.uint8)) is None
    assert degenerate_reason(np.zeros((31, 500, 3), np.uint8)) is not None


# --------------------------------------------------------------------------- header and limit


def test_header_is_read_without_decoding(corpus: dict[str, Path]) -> None:
    assert (read_header(corpus["ok.png"]).width, read_header(corpus["ok.png"]).height) == (W, H)
    for name, fmt in (("cmyk.jpg", "JPEG"), ("exif_rotated.jpg", "JPEG"),
                      ("rgb16.tif", "TIFF"), ("gray16.png", "PNG")):
        header = read_header(corpus[name])
        assert (header.format, header.width, header.height) == (fmt, W, H), name
    tiff = read_header(corpus["tiff_named.png"])  # content wins over the name
    assert (tiff.format, tiff.width, tiff.height) == ("TIFF", 20000, 20000)


def test_bmp_header_including_top_down(tmp_path: Path) -> None:
    Image.fromarray(texture(7)).save(tmp_path / "a.bmp")
    header = read_header(tmp_path / "a.bmp")
    assert (header.format, header.width, header.height) == ("BMP", W, H)
    data = bytearray((tmp_path / "a.bmp").read_bytes())
    data[22:26] = (-H).to_bytes(4, "little", signed=True)  # top-down rows
    (tmp_path / "b.bmp").write_bytes(bytes(data))
    assert read_header(tmp_path / "b.bmp").height == H


def test_limit_is_configurable_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert max_megapixels() == DEFAULT_MAX_MEGAPIXELS == 40.0
    Image.fromarray(texture(8, 100, 100)).save(tmp_path / "a.png")  # 0.01 MP
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "0.005")
    with pytest.raises(ImageLoadError, match=r"a\.png: 100x100 pixels .*limit of 0\.005"):
        load_image(tmp_path / "a.png")
    with pytest.raises(ImageLoadError, match="limit of 0.005"):
        image_header(tmp_path / "a.png")
    assert Image.MAX_IMAGE_PIXELS == 5000  # Pillow's own check follows Kensa's
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "0.01")
    assert load_image(tmp_path / "a.png").shape == (100, 100, 3)  # exactly at the limit
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="KENSA_MAX_MEGAPIXELS='lots'"):
        load_image(tmp_path / "a.png")


def test_real_png_bomb_decodes_below_the_limit(tmp_path: Path) -> None:
    """The bomb generator makes valid PNGs: refusing bomb.png is the limit, not a bad file."""
    (tmp_path / "small.png").write_bytes(png_bomb(300))
    out = load_image(tmp_path / "small.png")
    assert out.shape == (300, 300, 3) and not out.any()


def test_header_and_decoder_disagreeing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lie.png").write_bytes(png_header_only(64, 64))  # IDAT far too short
    with pytest.raises(ImageLoadError, match=r"lie\.png: cannot decode"):
        load_image(tmp_path / "lie.png")


def test_too_many_tiff_samples_refused_before_decoding(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((5, H, W), np.uint8), planarconfig="separate",
                     photometric="minisblack")
    with pytest.raises(ImageLoadError, match=r"s\.tif: the TIFF declares 5 samples per pixel"):
        load_image(tmp_path / "s.tif")


def test_bombs_fail_fast_with_low_peak_memory(corpus: dict[str, Path]) -> None:
    """In a fresh process: refusing every bomb raises peak RSS by less than 50 MB."""
    script = textwrap.dedent(
        """
        import json, resource, sys
        from engine.data import ImageLoadError, load_image, load_mask
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcomes = {}
        for path in sys.argv[1:]:
            for fn in (load_image, load_mask):
                try:
                    fn(path)
                    outcomes[path] = "loaded"
                except ImageLoadError as exc:
                    outcomes[path] = str(exc)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kb": after - before, "outcomes": outcomes}))
        """
    )
    bombs = [str(corpus[n]) for n in ("bomb.png", "huge_header.png", "tiff_named.png")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(MAX_MEGAPIXELS_ENV, None)
    done = subprocess.run([sys.executable, "-c", script, *bombs], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    for path in bombs:
        assert "above the limit" in result["outcomes"][path]
    assert result["growth_kb"] < 50 * 1024, result


# --------------------------------------------------------------------------- no float64 copies


def _peak_bytes(fn: Callable[..., object], *args: object) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.random.default_rng(0).random((2048, 2048), dtype=np.float32) * 4 - 1,
        lambda: np.random.default_rng(0).integers(0, 65535, (2048, 2048, 3), dtype=np.uint16),
    ],
    ids=["float32-stretched", "uint16-rgb"],
)
def test_conversion_to_uint8_makes_no_full_size_float64_copy(
    make: Callable[[], np.ndarray],
) -> None:
    arr = make()
    peak = _peak_bytes(_to_uint8, arr, Path("x"))
    out_bytes = arr.size  # the uint8 result itself
    full_float64 = arr.size * 8
    assert peak < out_bytes + 12 * 1024**2 < full_float64, (peak, out_bytes)


def test_loading_a_1024px_16bit_image_stays_small(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 65535, (1024, 1024, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", arr, photometric="rgb")
    peak = _peak_bytes(load_image, tmp_path / "big.tif")
    # native 6 MB + result 3 MB + bounded scratch; a float64 copy alone would be 24 MB.
    assert peak < 20 * 1024**2, peak


# --------------------------------------------------------------------------- masks


def test_mask_with_background_1_to_2_gives_exactly_the_255_region(
    corpus: dict[str, Path],
) -> None:
    mask, warning = load_mask_with_warning(corpus["mask_bg12.png"])
    expected = np.zeros((H, W), bool)
    expected[10:20, 30:50] = True
    np.testing.assert_array_equal(mask, expected)
    assert warning is not None
    assert str(corpus["mask_bg12.png"]) in warning
    assert "values 1–2 treated as background" in warning and "255 as defect" in warning
    assert f"above {MASK_THRESHOLD}" in warning


def _write(path: Path, arr: np.ndarray) -> Path:
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize(
    ("values", "defect_value", "warns"),
    [
        ((0, 255), 255, False),  # the clean case
        ((0, 200), 200, False),  # binary with another "on" value: by the rule, no noise
        ((0, 1), 1, False),  # 0/1 label map: 1 is defect
        ((0, 100, 255), 255, True),  # 100 is background by the rule, and said so
        ((3, 250, 255), 250, True),  # JPEG-like noise on both sides
    ],
)
def test_mask_rule(tmp_path: Path, values: tuple[int, ...], defect_value: int,
                   warns: bool) -> None:
    arr = np.full((H, W), values[0], np.uint8)
    for i, v in enumerate(values[1:]):
        arr[i * 5 : i * 5 + 4, :8] = v
    mask, warning = load_mask_with_warning(_write(tmp_path / "m.png", arr))
    expected = arr > MASK_THRESHOLD if defect_value > 1 else arr == 1
    np.testing.assert_array_equal(mask, expected)
    assert (warning is not None) == warns


def test_mask_rule_on_16bit_float_colour_and_palette(tmp_path: Path) -> None:
    m16 = np.zeros((H, W), np.uint16)
    m16[:4, :4] = 65535
    m16[4:8, :4] = 257 * 127  # 127 on the 8-bit scale: background
    m16[8:12, :4] = 257 * 128  # 128: defect
    out, warning = load_mask_with_warning(_write(tmp_path / "m16.png", m16))
    assert out.sum() == 32 and out[8, 0] and not out[4, 0] and warning is not None
    mf = np.zeros((H, W), np.float32)
    mf[:4, :4] = 1.0
    mf[4:8, :4] = 0.4
    assert load_mask(_write(tmp_path / "mf.tif", mf)).sum() == 16
    red = np.zeros((H, W, 3), np.uint8)
    red[:3, :3, 0] = 255  # a red annotation counts like a white one
    assert load_mask(_write(tmp_path / "red.png", red)).sum() == 9
    pal = Image.fromarray(np.pad(np.ones((3, 3), np.uint8), ((0, H - 3), (0, W - 3))), "P")
    pal.putpalette([0, 0, 0, 40, 40, 40] + [0] * 762)  # index 1 is dark grey: still defect
    pal.save(tmp_path / "pal.png")
    assert load_mask(tmp_path / "pal.png").sum() == 9


# --------------------------------------------------------------------------- discovery


def test_discovery_reports_degenerate_goods_and_non_binary_masks(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    good = root / "train" / "good"
    good.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(texture(30 + i)).save(good / f"{i}.png")
    for name in ("one_px.png", "flat.png", "bomb.png", "tiff_named.png"):
        (good / name).write_bytes(corpus[name].read_bytes())
    defect = root / "test" / "scratch"
    defect.mkdir(parents=True)
    Image.fromarray(texture(40)).save(defect / "d.png")
    Image.new("RGB", (W, H), (0, 0, 0)).save(defect / "blank.png")  # a blank frame, labelled bad
    masks = root / "ground_truth" / "scratch"
    masks.mkdir(parents=True)
    (masks / "d_mask.png").write_bytes(corpus["mask_bg12.png"].read_bytes())
    Image.new("L", (W, H), 255).save(masks / "blank_mask.png")

    idx = discover(root)
    kinds = {p.path.name: p.kind for p in idx.problems}
    assert kinds == {
        "one_px.png": "degenerate",
        "flat.png": "degenerate",
        "bomb.png": "unreadable",
        "tiff_named.png": "unreadable",
        "d_mask.png": "mask_not_binary",
    }
    for p in idx.problems:
        assert str(p.path) in p.message
    assert {r.path.name for r in idx.select(split="train")} == {"0.png", "1.png"}
    by_name = {r.path.name: r for r in idx.select(label="defect")}
    assert by_name["d.png"].mask_path == masks / "d_mask.png"  # warned, still used
    assert "blank.png" in by_name  # flat defect images are legitimate test cases

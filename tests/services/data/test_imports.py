"""services.data.imports: what an untrusted zip or folder can and cannot do to the server."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from services.data.imports import (
    ImportLimits,
    ImportRefused,
    find_dataset_root,
    import_folder,
    import_zip,
    layout_prefix,
    project_slug,
    safe_relative,
)
from tests.synthetic import texture, write_png


def _png_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    path = write_png(tmp_path / f"src_{seed}.png", texture(np.random.default_rng(seed), 32))
    return path.read_bytes()


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def _reasons(report) -> dict[str, str]:
    return {r.name: r.reason for r in report.rejected}


def test_good_zip_imports_and_finds_root_one_level_down(tmp_path: Path) -> None:
    png = _png_bytes(tmp_path)
    buf = _zip(
        [("mydata/train/good/a.png", png), ("mydata/test/good/b.png", _png_bytes(tmp_path, 1))]
    )
    report = import_zip(buf, tmp_path / "out")
    assert sorted(report.imported) == ["test/good/b.png", "train/good/a.png"]
    assert report.rejected == []
    assert report.dataset_root == tmp_path / "out"
    assert (tmp_path / "out" / "train" / "good" / "a.png").read_bytes() == png
    assert report.ok


def test_zip_without_layout_or_with_two_datasets_is_refused(tmp_path: Path) -> None:
    png = _png_bytes(tmp_path)
    with pytest.raises(ImportRefused, match="no data set found"):
        import_zip(_zip([("pictures/a.png", png)]), tmp_path / "out")
    two = _zip([("a/train/good/x.png", png), ("b/train/good/y.png", png)])
    with pytest.raises(ImportRefused, match="several data sets"):
        import_zip(two, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_files_outside_the_dataset_folder_are_listed(tmp_path: Path) -> None:
    png = _png_bytes(tmp_path)
    report = import_zip(_zip([("d/train/good/x.png", png), ("d2/stray.png", png)]), tmp_path / "o")
    assert report.imported == ["train/good/x.png"]
    assert "outside the data set folder 'd/'" in _reasons(report)["d2/stray.png"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.png", "leaves the import folder"),
        ("train/good/../../../evil.png", "leaves the import folder"),
        ("..\\..\\evil.png", "leaves the import folder"),
        ("/etc/evil.png", "absolute path"),
        ("C:/Windows/evil.png", "absolute path"),
    ],
)
def test_traversal_and_absolute_entries_are_rejected(
    tmp_path: Path, name: str, reason: str
) -> None:
    png = _png_bytes(tmp_path)
    buf = _zip([(name, png), ("train/good/ok.png", png)])
    out = tmp_path / "deep" / "out"
    report = import_zip(buf, out)
    assert reason in _reasons(report)[name]
    assert report.imported == ["train/good/ok.png"]
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert sorted(written) == ["ok.png", "src_0.png"]
    assert "evil.png" not in written


def test_symlink_entry_is_rejected(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("train/good/link.png")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = _zip([(info, b"/etc/passwd"), ("train/good/ok.png", _png_bytes(tmp_path))])
    report = import_zip(buf, tmp_path / "out")
    assert "symbolic link" in _reasons(report)["train/good/link.png"]
    assert not (tmp_path / "out" / "train" / "good" / "link.png").exists()


def test_high_ratio_entry_is_rejected_as_bomb(tmp_path: Path) -> None:
    bomb = b"\x89PNG\r\n\x1a\n" + bytes(8 * 1024**2)  # 8 MB of zeros: ~8 KB compressed
    buf = _zip([("train/good/bomb.png", bomb), ("train/good/ok.png", _png_bytes(tmp_path))])
    report = import_zip(buf, tmp_path / "out")
    assert "decompression bomb" in _reasons(report)["train/good/bomb.png"]
    assert report.imported == ["train/good/ok.png"]


def test_archive_announcing_too_much_is_refused(tmp_path: Path) -> None:
    png = _png_bytes(tmp_path)
    buf = _zip([(f"train/good/{i}.png", png) for i in range(3)])
    with pytest.raises(ImportRefused, match="unpack to"):
        import_zip(buf, tmp_path / "out", ImportLimits(max_total_bytes=2 * len(png)))
    assert not (tmp_path / "out").exists()


def test_non_images_and_fake_images_are_listed(tmp_path: Path) -> None:
    buf = _zip([
        ("train/good/notes.txt", b"hello"),
        ("train/good/virus.png", b"MZ\x90\x00 not a png"),
        ("__MACOSX/train/good/._a.png", b"junk"),
        ("train/good/ok.png", _png_bytes(tmp_path)),
    ])
    report = import_zip(buf, tmp_path / "out")
    reasons = _reasons(report)
    assert "not an image file" in reasons["train/good/notes.txt"]
    assert "not a PNG, JPEG" in reasons["train/good/virus.png"]
    assert "operating-system" in reasons["__MACOSX/train/good/._a.png"]
    assert report.imported == ["train/good/ok.png"]


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportRefused, match="not a readable zip"):
        import_zip(io.BytesIO(b"definitely not a zip"), tmp_path / "out")


def test_reimport_same_bytes_is_unchanged_and_different_bytes_refused(tmp_path: Path) -> None:
    import_zip(_zip([("train/good/a.png", _png_bytes(tmp_path))]), tmp_path / "out")
    again = import_zip(_zip([("train/good/a.png", _png_bytes(tmp_path))]), tmp_path / "out")
    assert again.unchanged == ["train/good/a.png"] and again.imported == []
    other = import_zip(_zip([("train/good/a.png", _png_bytes(tmp_path, 5))]), tmp_path / "out")
    assert "different file with this name" in _reasons(other)["train/good/a.png"]


def test_folder_import_skips_links_and_non_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_png(src / "good" / "a.png", texture(np.random.default_rng(0), 32))
    (src / "good" / "readme.txt").write_text("x")
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png_bytes(tmp_path, 3))
    os.symlink(secret, src / "good" / "link.png")
    os.symlink(tmp_path, src / "good" / "loop")
    report = import_folder(src, tmp_path / "home" / "imports" / "p")
    reasons = _reasons(report)
    assert report.imported == ["good/a.png"]
    assert "symbolic link" in reasons["good/link.png"]
    assert "symbolic link" in reasons["good/loop"]
    assert "not an image" in reasons["good/readme.txt"]
    assert report.dataset_root == tmp_path / "home" / "imports" / "p"


def test_folder_import_refuses_missing_folder_and_itself(tmp_path: Path) -> None:
    with pytest.raises(ImportRefused, match="no such folder"):
        import_folder(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ImportRefused, match="into itself"):
        import_folder(tmp_path, tmp_path / "out")


def test_helpers() -> None:
    assert project_slug("../My Line #3") == "My-Line-3"
    assert project_slug("...") == "project"
    assert str(safe_relative("a/./b.png")) == "a/b.png"
    assert find_dataset_root(Path("/nonexistent")) is None
    paths = [PurePosixPath("x/y/good/a.png"), PurePosixPath("x/y/defect/b.png")]
    assert str(layout_prefix(paths)) == "x/y"

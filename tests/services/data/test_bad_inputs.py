"""Issue 8: the generated bad-input corpus through import, training and scoring.

Every file gets a named outcome: imported (and then either trained on, or listed as a problem
by discovery) or rejected with a reason in words; scoring yields a prediction or a problem
naming the file. Failures leave nothing behind: no ``.import-*`` temp file, no empty folder.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import services.data.imports as imports
from engine.data import discover
from engine.image_limits import MAX_MEGAPIXELS_ENV
from services.data.imports import ImportLimits, ImportRefused, import_folder, import_zip
from services.inference.scoring import ScoringProblem, ThresholdInfo, iter_predictions
from services.training.fit import train_model
from tests.bad_inputs import write_corpus
from tests.synthetic import make_mvtec, write_png

REPO = Path(__file__).resolve().parents[3]
LONG_NAME = "x" * 296 + ".png"  # 300 characters: above the 255-byte limit of file systems

#: Corpus files that import (they decode within the limit) -- discovery judges them later.
IMPORTED = {
    "ok.png", "cmyk.jpg", "palette.png", "gray16.png", "rgb16.tif", "exif_rotated.jpg",
    "animated.png", "multipage.tif", "nan.tif", "one_px.png", "flat.png", "mask_bg12.png",
}
#: Corpus files an import rejects, with the words the reason must contain.
REJECTED = {
    "truncated.png": "cannot decode image",
    "empty.jpg": "file is empty (0 bytes)",
    "animated.gif": "not an image file",
    "allnan.tif": "no finite pixel values",
    "bomb.png": "12000x12000 pixels (144.0 megapixels) is above the limit of 40 megapixels",
    "huge_header.png": "20000x20000 pixels (400.0 megapixels) is above the limit",
    "tiff_named.png": "20000x20000 pixels (400.0 megapixels) is above the limit",
    "blob.png": "cannot decode image",
    "junk_after.png": "the rest is not image data",
}


@pytest.fixture(autouse=True)
def default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_MEGAPIXELS_ENV, raising=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _corpus_zip(corpus: dict[str, Path]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in corpus.items():
            zf.writestr(f"line/train/good/{name}", path.read_bytes())
        zf.writestr(f"line/train/good/{LONG_NAME}", corpus["ok.png"].read_bytes())
    buf.seek(0)
    return buf


def _leftovers(root: Path) -> list[str]:
    """Temp files and empty folders under ``root``: what a failed entry must not leave."""
    out = [str(p) for p in root.rglob(".import-*")]
    out += [str(p) for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]
    return out


def _reasons(report: imports.ImportReport) -> dict[str, str]:
    return {r.name.rsplit("/", 1)[-1]: r.reason for r in report.rejected}


def test_zip_import_of_the_corpus(corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "home" / "imports" / "line"
    report = import_zip(_corpus_zip(corpus), out)
    assert {Path(n).name for n in report.imported} == IMPORTED
    reasons = _reasons(report)
    assert set(reasons) == set(REJECTED) | {LONG_NAME}
    for name, words in REJECTED.items():
        assert words in reasons[name], (name, reasons[name])
    assert "300 bytes long" in reasons[LONG_NAME] and "at most 255" in reasons[LONG_NAME]
    stored = {p.name for p in (out / "train" / "good").iterdir()}
    assert stored == IMPORTED  # nothing rejected was kept, not even as a temp file
    assert _leftovers(tmp_path) == []
    # Importing the same zip again changes nothing and still leaves nothing behind.
    again = import_zip(_corpus_zip(corpus), out)
    assert again.imported == [] and {Path(n).name for n in again.unchanged} == IMPORTED
    assert {p.name for p in (out / "train" / "good").iterdir()} == IMPORTED
    assert _leftovers(tmp_path) == []


def test_folder_import_of_the_corpus(corpus: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "src" / "good"
    src.mkdir(parents=True)
    for name, path in corpus.items():
        (src / name).write_bytes(path.read_bytes())
    out = tmp_path / "home" / "imports" / "line"
    report = import_folder(src.parent, out)
    assert {Path(n).name for n in report.imported} == IMPORTED
    reasons = _reasons(report)
    for name, words in REJECTED.items():
        assert words in reasons[name], (name, reasons[name])
    assert _leftovers(tmp_path / "home") == []


def test_only_rejected_entries_leave_no_folder(corpus: dict[str, Path], tmp_path: Path) -> None:
    """A folder that would hold only refused files is never created."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train/good/ok.png", corpus["ok.png"].read_bytes())
        zf.writestr("test/broken/blob.png", corpus["blob.png"].read_bytes())
        zf.writestr(f"test/long/{LONG_NAME}", corpus["ok.png"].read_bytes())
    report = import_zip(buf, tmp_path / "out")
    assert report.imported == ["train/good/ok.png"]
    assert not (tmp_path / "out" / "test").exists()
    assert _leftovers(tmp_path) == []


def test_write_failure_is_a_rejection_and_cleans_up(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "cmyk.jpg":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(imports.os, "replace", failing_replace)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train/good/ok.png", corpus["ok.png"].read_bytes())
        zf.writestr("test/other/cmyk.jpg", corpus["cmyk.jpg"].read_bytes())
    report = import_zip(buf, tmp_path / "out")
    assert report.imported == ["train/good/ok.png"]
    assert _reasons(report) == {"cmyk.jpg": "cannot be written (No space left on device)"}
    assert not (tmp_path / "out" / "test").exists()  # the folder made for it is gone again
    assert _leftovers(tmp_path) == []


def test_unexpected_error_removes_the_temp_file(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(Exception):
        """Something no import code expects (a bug, an interrupt)."""

    def boom(path: Path) -> None:
        raise Crash("decoder crashed")

    monkeypatch.setattr(imports, "verify_image", boom)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train/good/ok.png", corpus["ok.png"].read_bytes())
    with pytest.raises(Crash, match="decoder crashed"):
        import_zip(buf, tmp_path / "out")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_import_quota_is_configurable(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(imports.IMPORT_QUOTA_ENV, "0.000001")  # about 1 KB
    with pytest.raises(ImportRefused, match="would unpack to .* the limit is"):
        import_zip(_corpus_zip(corpus), tmp_path / "out", ImportLimits())
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(imports.IMPORT_QUOTA_ENV, "many")
    with pytest.raises(ValueError, match="KENSA_IMPORT_MAX_GB='many'"):
        ImportLimits()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (LONG_NAME, "300 bytes long"),
        ("a/" + "é" * 130 + ".png", "264 bytes long"),  # 134 characters, 264 bytes in UTF-8
        ("/".join(["d" * 200] * 6) + "/x.png", "the path is 1211 bytes long"),
    ],
)
def test_long_names_are_reasons_not_errors(name: str, words: str) -> None:
    reason = imports.safe_relative(name)
    assert isinstance(reason, str) and words in reason


def test_import_memory_stays_bounded_with_bombs(corpus: dict[str, Path], tmp_path: Path) -> None:
    """A zip of bombs (the 2 GB Streamlit case) imports in a fresh process within 80 MB."""
    (tmp_path / "bombs.zip").write_bytes(_corpus_zip(corpus).getvalue())
    script = textwrap.dedent(
        """
        import json, resource, sys
        from pathlib import Path
        from services.data.imports import import_zip
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = import_zip(sys.argv[1], Path(sys.argv[2]))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kb": after - before, "imported": len(report.imported),
                          "rejected": {r.name: r.reason for r in report.rejected}}))
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(MAX_MEGAPIXELS_ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "bombs.zip"), str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(done.stdout)
    assert result["imported"] == len(IMPORTED)
    assert "above the limit" in result["rejected"]["line/train/good/bomb.png"]
    assert result["growth_kb"] < 80 * 1024, result


# --------------------------------------------------------------------------- training, scoring


def test_training_skips_degenerate_goods_and_reads_masks_by_the_rule(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    root = make_mvtec(tmp_path / "widgets", n_train=4, n_test_good=3, n_defect=2, size=96)
    good = root / "train" / "good"
    for name in ("one_px.png", "flat.png", "bomb.png", "tiff_named.png", "truncated.png"):
        (good / name).write_bytes(corpus[name].read_bytes())
    # spot_000's mask, re-saved with a background of 1-2 instead of 0 (the 0.39 AUROC case).
    mask_path = root / "ground_truth" / "spot" / "spot_000_mask.png"
    clean = np.asarray(Image.open(mask_path)) > 127
    noisy = np.random.default_rng(0).integers(1, 3, clean.shape, dtype=np.uint8)
    noisy[clean] = 255
    write_png(mask_path, noisy)

    index = discover(root)
    kinds = {p.path.name: p.kind for p in index.problems}
    assert kinds == {
        "one_px.png": "degenerate", "flat.png": "degenerate", "bomb.png": "unreadable",
        "tiff_named.png": "unreadable", "truncated.png": "unreadable",
        "spot_000_mask.png": "mask_not_binary",
    }
    outcome = train_model(index, shots=None, seed=0, params={"image_size": 96})
    assert {Path(p).name for p in outcome.shots} == {f"good_{i:03d}.png" for i in range(4)}
    assert outcome.skipped == []
    i = outcome.validation.paths.index(str(root / "test" / "spot" / "spot_000.png"))
    val_mask = outcome.validation.masks[i]
    assert val_mask is not None and 0 < val_mask.sum() == clean.sum()

    # Scoring the whole corpus: a prediction or a problem naming the file, never a traceback.
    rule = ThresholdInfo(float(outcome.threshold.value), "test")
    paths = sorted(corpus.values())
    results = list(iter_predictions(outcome.model, paths, rule))
    by_path = {r.path: r for r in results}
    assert set(by_path) == {str(p) for p in paths}
    for name, words in REJECTED.items():
        result = by_path[str(corpus[name])]
        if name in ("animated.gif",):
            words = "is a GIF"
        elif name == "junk_after.png":
            assert not isinstance(result, ScoringProblem)  # valid pixels: scored
            continue
        assert isinstance(result, ScoringProblem), name
        assert result.message.startswith(str(corpus[name])) and words in result.message
    for name in IMPORTED:
        assert not isinstance(by_path[str(corpus[name])], ScoringProblem), name

"""The train use case on files: bad inputs are named and skipped; the run folder round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from engine.data import discover, sha256_file
from services import cli
from services.training.fit import TrainingInputError, split_records, train_model
from tests.synthetic import make_mvtec, texture, write_png

SMALL = {"image_size": 96}


@pytest.fixture()
def messy_dataset(tmp_path: Path) -> Path:
    """Good parts plus one of each bad input a user's folder really contains."""
    root = make_mvtec(tmp_path / "parts", n_train=5, n_test_good=3, n_defect=3)
    rng = np.random.default_rng(3)
    good = root / "train" / "good"
    (good / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (good / "empty.jpg").write_bytes(b"")
    rgba = np.dstack([texture(rng), np.full((96, 96), 200, np.uint8)])
    cv2.imwrite(str(good / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    tifffile.imwrite(good / "deep.tif", (texture(rng)[..., 0].astype(np.uint16) * 257))
    write_png(root / "ground_truth" / "spot" / "spot_000_mask.png",
              np.zeros((40, 40), np.uint8))  # wrong size for its 96x96 image
    return root


def test_bad_files_are_named_and_training_uses_the_rest(messy_dataset: Path) -> None:
    index = discover(messy_dataset)
    problems = {p.path.name: p.kind for p in index.problems}
    assert problems["corrupt.png"] == "unreadable"
    assert problems["empty.jpg"] == "empty"
    assert problems["spot_000_mask.png"] == "mask_size"
    names = {r.path.name for r in index.records}
    assert {"rgba.png", "deep.tif"} <= names  # odd formats still load
    outcome = train_model(index, params=SMALL)
    assert len(outcome.shots) == 7  # 5 generated + RGBA + 16-bit TIFF
    assert outcome.threshold.method == "f1_optimal"
    assert outcome.metrics["image_auroc"] > 0.9


def test_threshold_without_defects_is_set_on_synthetic_ones(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "goods", n_train=6, n_test_good=3, n_defect=0)
    outcome = train_model(discover(root), shots=3, params=SMALL)
    assert outcome.threshold.method == "synthetic_f1"  # mean + 3 sigma only for flat images
    assert outcome.threshold.value > outcome.validation.normal_scores.mean()


def test_too_many_shots_is_a_clear_error(tmp_path: Path) -> None:
    index = discover(make_mvtec(tmp_path / "d", n_train=3, n_test_good=1, n_defect=1))
    with pytest.raises(TrainingInputError, match="Choose between 1 and 3"):
        split_records(index, shots=10, seed=0)


def test_same_seed_same_shots(tmp_path: Path) -> None:
    index = discover(make_mvtec(tmp_path / "d", n_train=8, n_test_good=1, n_defect=1))
    first, _ = split_records(index, 3, seed=5)
    again, _ = split_records(index, 3, seed=5)
    assert first == again


def test_cli_train_and_score_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_mvtec(tmp_path / "d", n_train=5, n_test_good=3, n_defect=3)
    run = tmp_path / "run"
    (root / "train.json").write_text("{}")  # stray non-image files are ignored
    assert cli.main(["--json", "--quiet", "train", "--data", str(root), "--out", str(run),
                     "--shots", "4", "--set", "image_size=96"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shots"] == 4
    assert {"run.json", "threshold.json", "bank.safetensors", "model.json"} <= set(
        p.name for p in run.iterdir())
    assert cli.main(["--json", "--quiet", "score", "--run", str(run),
                     str(root / "test")]) == 0
    scored = json.loads(capsys.readouterr().out)
    verdicts = {Path(p["path"]).parent.name: p["verdict"] for p in scored["predictions"]}
    assert len(scored["predictions"]) == 6 and verdicts["spot"] == "defect"


def test_cli_score_names_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--quiet", "score", "--run", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err


def test_run_folder_keeps_provenance_and_verifies_model_json(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_mvtec(tmp_path / "d", n_train=5, n_test_good=2, n_defect=2)
    run = tmp_path / "run"
    assert cli.main(["--json", "--quiet", "train", "--data", str(root), "--out", str(run),
                     "--shots", "2", "--set", "image_size=96", "--set", "views=none"]) == 0
    capsys.readouterr()
    payload = json.loads((run / "model.json").read_text())
    records = payload["records"]
    assert [r["id"] for r in records] == [0, 1]  # no database: ids from 0, one per shot
    shots = json.loads((run / "run.json").read_text())["train_images"]
    assert [r["path"] for r in records] == shots and len(set(shots)) == 2
    assert all(r["sha256"] == sha256_file(r["path"]) for r in records)
    payload["config"]["blur_sigma"] = 0.0
    (run / "model.json").write_text(json.dumps(payload))
    assert cli.main(["--quiet", "score", "--run", str(run), str(root / "test")]) != 0
    assert "model.json failed its integrity check" in capsys.readouterr().err

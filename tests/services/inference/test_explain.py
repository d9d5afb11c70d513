"""services.inference.explain on a trained project: images, provenance, report, CLI, jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import db.repositories as repo
from engine.data import load_image
from services.cli import main
from services.context import Kensa
from services.data.projects import require_project
from services.inference.batches import score_batch
from services.inference.explain import (
    colour_scale_legend,
    explain_image,
    explainable_images,
    feature_view,
    mark_normal,
    overlay_png,
    report_html,
)
from services.jobs.api import get_job

KEYS = {"verdict", "score", "threshold", "confidence", "regions"}
REGION_KEYS = {"index", "box", "area_px", "area_pct", "peak", "mean", "kind", "measurements",
               "nearest"}
NEAREST_KEYS = {"record_id", "file_name", "path", "sha256", "view", "row", "col", "box",
                "distance"}


def _defect_image(dataset: Path) -> Path:
    return sorted((dataset / "test" / "spot").glob("*.png"))[0]


def _strong_defect(tmp_path: Path, dataset: Path) -> Path:
    """A training-like image with a big dark square: surely a defect with a region."""
    image = load_image(sorted((dataset / "test" / "good").glob("*.png"))[0]).copy()
    cv2.rectangle(image, (30, 30), (60, 60), (15, 15, 20), -1)
    path = tmp_path / "drawn.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def test_neighbours_come_from_the_training_files_through_provenance(
        ctx: Kensa, trained: dict[str, Any], dataset: Path, tmp_path: Path) -> None:
    e = explain_image(ctx, "widgets", path=_strong_defect(tmp_path, dataset), k=3)
    assert e.verdict == "defect" and e.score >= e.threshold and e.regions
    with ctx.session(readonly=True) as s:
        project = require_project(s, "widgets")
        train = {i.sha256: i.path for i in repo.list_images(s, project.id, split="train")}
    region = e.regions[0]
    assert len(region.nearest) == 3
    for n in region.nearest:
        assert train[n.sha256] == n.path and Path(n.path).name == n.file_name
        x0, y0, x1, y1 = n.box
        np.testing.assert_array_equal(n.crop, load_image(n.path)[y0:y1, x0:x1])
    assert region.query_crop.size and region.kind in ("spot", "line", "area")
    assert 0 < e.p_value <= 1 and e.normalized >= 0.5
    assert e.model_label == "Model 1" and len(e.confidence_words) == 3
    assert e.image_name == "drawn.png" and "Defect" in e.summary


def test_a_good_part_gets_no_region_and_a_confident_good(
        ctx: Kensa, trained: dict[str, Any], new_goods: Any) -> None:
    """A fresh good part (not one of the held-out images the threshold was chosen on): the
    verdict is good with a margin, nothing is boxed, and the words say it looks like the good
    parts rather than "may be a false alarm"."""
    path = sorted(new_goods(1, seed=11).glob("*.png"))[0]
    e = explain_image(ctx, "widgets", path=path)
    assert e.verdict == "good" and e.regions == []
    assert e.score < 0.75 * e.threshold and e.normalized < 0.5
    assert e.held_out_good >= 3 and e.p_value > 1 / (e.held_out_good + 1)  # not the floor
    assert "typical of good parts" in e.confidence_words[0]
    assert e.summary.startswith("Good:") and "No part of the image reaches" in e.summary
    doc = e.as_json()
    assert doc["verdict"] == "good" and doc["regions"] == []
    page = report_html(e)
    assert page.startswith("<!DOCTYPE html>") and "No region reaches the threshold" in page


def test_json_keys_and_same_result_by_sha_and_upload(
        ctx: Kensa, trained: dict[str, Any], dataset: Path) -> None:
    path = _defect_image(dataset)
    by_path = explain_image(ctx, "widgets", path=path)
    by_sha = explain_image(ctx, "widgets", sha256=by_path.sha256)
    by_upload = explain_image(ctx, "widgets", upload=path.read_bytes(), upload_name=path.name)
    doc = by_sha.as_json()
    json.dumps(doc)  # plain JSON: no arrays, no NaN objects
    assert set(doc) >= KEYS and {"p_value", "false_alarm_rate", "knn_spread", "words"} <= set(
        doc["confidence"])
    for r in doc["regions"]:
        assert set(r) >= REGION_KEYS and all(set(n) >= NEAREST_KEYS for n in r["nearest"])
    assert by_sha.image_name == "test/spot/spot_000.png"
    assert by_path.score == by_sha.score == by_upload.score
    assert by_upload.sha256 == by_path.sha256


def test_report_is_self_contained(ctx: Kensa, trained: dict[str, Any], dataset: Path,
                                  tmp_path: Path) -> None:
    e = explain_image(ctx, "widgets", path=_strong_defect(tmp_path, dataset))
    page = report_html(e)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) >= 3 + len(e.regions[0].nearest)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    png = overlay_png(e, alpha=0.4, colormap="viridis")
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[:2] == e.image.shape[:2]
    assert colour_scale_legend().startswith(b"\x89PNG")
    stages = feature_view(ctx, "widgets", e)
    assert len(stages) == 2 and all(p.shape == e.image.shape for _, p in stages)


def test_explainable_images_list_dataset_and_lot_images(
        ctx: Kensa, trained: dict[str, Any], new_goods: Any) -> None:
    folder = new_goods(2, seed=7)
    score_batch(ctx, "widgets", folder, "lot-1")
    items = explainable_images(ctx, "widgets")
    labels = {i["label"]: i for i in items}
    assert labels["test/spot/spot_000.png"]["source"] == "dataset"
    assert labels["new_00.png"]["source"] == "lot-1"
    assert len({i["key"] for i in items}) == len(items)
    e = explain_image(ctx, "widgets", sha256=labels["new_00.png"]["key"])
    assert e.image_name == "new_00.png"


def test_cli_explain_json_and_html(home: Path, trained: dict[str, Any], dataset: Path,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.html"
    code = main(["explain", "widgets", str(_strong_defect(tmp_path, dataset)), "--json",
                 "--html", str(report)])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert set(doc) >= KEYS and doc["verdict"] == "defect"
    nearest = doc["regions"][0]["nearest"][0]
    assert nearest["file_name"].endswith(".png") and {"row", "col", "box"} <= set(nearest)
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert main(["explain", "widgets", str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_marking_a_false_alarm_normal_starts_a_bank_update(
        ctx: Kensa, trained: dict[str, Any], dataset: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KENSA_JOBS_INLINE", "1")
    drawn = _strong_defect(tmp_path, dataset)
    e = explain_image(ctx, "widgets", upload=drawn.read_bytes(), upload_name="odd.png")
    job = get_job(ctx, mark_normal(ctx, "widgets", e, by="inspector"))
    assert job["kind"] == "update_bank" and job["status"] == "done", job
    assert (ctx.home / "uploads" / "marked_normal" / f"{e.sha256}.png").is_file()
    with ctx.session(readonly=True) as s:
        project = require_project(s, "widgets")
        mv = repo.list_model_versions(s, project.id)[0]
        state = repo.get_active_state_version(s, mv.id)
        assert state.version == 2 and "marked normal by inspector" in state.note
    defect = explain_image(ctx, "widgets", path=_defect_image(dataset))
    with pytest.raises(ValueError, match="labelled defect"):
        mark_normal(ctx, "widgets", defect)

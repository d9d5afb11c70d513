"""A threshold without defect images: set on synthetic defects painted into held-out goods,
stored as files and predictions, and shown by the evaluation report as what they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import db.repositories as repo
from engine.augment.calibration import CALIBRATION_KINDS
from engine.data import DatasetIndex, ImageRecord, discover, load_image, sha256_file
from services.context import Kensa
from services.evaluation.report import load_evaluation, worst_errors
from services.inference.batches import validation_batch_name
from services.training.fit import SYNTHETIC_MIN, synthetic_threshold, train_model
from services.training.project import SYNTHETIC_DIR, train_project
from services.wording import method_words
from tests.services.conftest import PARAMS
from tests.synthetic import make_mvtec, write_png


def test_without_defects_the_threshold_is_f1_on_synthetic_defects(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "goods", n_train=3, n_test_good=2, n_defect=0)
    outcome = train_model(discover(root), params=PARAMS)
    val, thr = outcome.validation, outcome.threshold
    assert thr.method == "synthetic_f1" and "synthetic" in method_words(thr.method)
    # two held-out goods, each painted often enough for SYNTHETIC_MIN defects in all
    held_goods = sorted(str(p) for p in (root / "test" / "good").iterdir())
    assert [val.paths[i] for i in np.flatnonzero(val.labels == 0)] == held_goods
    assert len(val.synthetic) == SYNTHETIC_MIN == int((val.labels == 1).sum())
    assert thr.params["synthetic_defects"] == SYNTHETIC_MIN
    assert sorted({e.source for e in val.synthetic.values()}) == held_goods
    assert sorted({e.kind for e in val.synthetic.values()}) == sorted(CALIBRATION_KINDS)
    # placed by F1 between goods and synthetic defects, above the highest good when they part
    goods, painted = val.scores[val.labels == 0], val.scores[val.labels == 1]
    if painted.min() > goods.max():
        assert goods.max() < thr.value < painted.min()
    for key in ("image_auroc", "pixel_auroc", "aupro"):  # measured on the synthetic masks
        assert 0.0 <= outcome.metrics[key] <= 1.0
    # the stored PNG is exactly what was scored
    i, entry = next(iter(val.synthetic.items()))
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(entry.png, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    assert outcome.model.score([decoded]).scores[0] == pytest.approx(val.scores[i], rel=1e-5)
    assert (entry.height, entry.width) == decoded.shape[:2]

    # the benchmark's entry point gives the same threshold from the model and the goods alone
    again, scored = synthetic_threshold(outcome.model, [load_image(p) for p in held_goods],
                                        seed=0)
    assert again.method == "synthetic_f1" and again.value == pytest.approx(thr.value)
    assert len(scored.synthetic) == SYNTHETIC_MIN


def test_flat_held_out_goods_fall_back_to_mean_three_sigma_and_say_why(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "flat", n_train=3, n_test_good=0, n_defect=0)
    index = discover(root)
    # held-out goods with nothing to paint a defect with (indexed before discover refused
    # flat images, as a project's database may hold them)
    flats = [ImageRecord(write_png(root / "test" / "good" / f"flat_{i}.png",
                                   np.full((96, 96, 3), 80 + 40 * i, np.uint8)),
                         "test", "good", None, None) for i in range(2)]
    index = DatasetIndex(index.root, index.layout, [*index.records, *flats], [])
    outcome = train_model(index, params=PARAMS)
    assert sorted(outcome.validation.paths) == sorted(str(r.path) for r in flats)
    assert not outcome.validation.synthetic
    assert outcome.threshold.method == "mean_k_sigma"
    assert "no synthetic defect could be painted" in outcome.threshold.params["why"]


def test_project_without_defects_stores_and_shows_its_synthetic_defects(
    ctx: Kensa, make_project: Any
) -> None:
    make_project("plain", n_train=3, n_test_good=2, n_defect=0)
    mv = train_project(ctx, "plain", seed=0, params=PARAMS)
    metrics = mv["metrics"]
    assert metrics["threshold"]["method"] == "synthetic_f1"
    assert metrics["metrics_on"] == "synthetic" and 0.0 <= metrics["image_auroc"] <= 1.0
    assert metrics["validation_images"] == 2  # real held-out images; the painted ones below
    listed = metrics["synthetic_validation"]
    assert len(listed) == SYNTHETIC_MIN == metrics["threshold"]["params"]["synthetic_defects"]
    model_dir = ctx.model_dir(mv["project_id"], mv["id"])
    for entry in listed:
        path, mask = ctx.resolve(entry["path"]), ctx.resolve(entry["mask_path"])
        assert path.parent == model_dir / SYNTHETIC_DIR and sha256_file(path) == entry["sha256"]
        assert load_image(path).shape[:2] == cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).shape
        assert entry["kind"] in CALIBRATION_KINDS and Path(entry["source"]).is_file()

    with ctx.session(readonly=True) as s:
        batch = repo.get_batch_by_name(s, mv["project_id"], validation_batch_name(mv["id"]))
        preds = {p.image_sha256: p for p in repo.list_predictions(s, batch.id)}
        threshold = repo.get_active_threshold_for_model(s, mv["id"])
    assert threshold.method == "synthetic_f1"
    assert len(preds) == 2 + SYNTHETIC_MIN  # two held-out goods and their synthetic defects
    for entry in listed:
        p = preds[entry["sha256"]]
        assert p.image_path == str(ctx.resolve(entry["path"]))
        assert ctx.resolve(p.heatmap_path).is_file()
        assert p.verdict == ("defect" if p.raw_score >= threshold.raw_value else "good")

    ev = load_evaluation(ctx, "plain", mv["id"])
    assert ev.unmatched == 0 and ev.has_both
    assert (ev.n_good, ev.n_defect) == (2, SYNTHETIC_MIN)
    painted = [r for r in ev.images if r.label == 1]
    assert {r.sha256 for r in painted} == {e["sha256"] for e in listed}
    for r in painted:
        assert r.defect_type.startswith("synthetic (")  # the name is the good image painted
        assert Path(r.path).is_file() and r.heatmap_path and Path(r.heatmap_path).is_file()
    assert any(f"set on {SYNTHETIC_MIN} synthetic defects painted into held-out good images"
               in note for note in ev.notes)
    # a threshold above every score misses every synthetic defect: the gallery shows them
    _, missed = worst_errors(ev, float(ev.scores.max()) + 1.0)
    assert missed and all(r.defect_type.startswith("synthetic") for r in missed)


def test_project_with_defects_keeps_f1_on_real_defects(trained: dict[str, Any]) -> None:
    metrics = trained["metrics"]
    assert metrics["threshold"]["method"] == "f1_optimal"
    assert "synthetic_validation" not in metrics and "metrics_on" not in metrics

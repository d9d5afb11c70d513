"""engine.explain on a tiny model trained here: localisation, kinds, provenance, confidence."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.explain import explain_arrays
from engine.explain.confidence import conformal_p_value, false_alarm_rate, knn_spread
from engine.explain.neighbours import neighbours_of
from engine.explain.overlay import colorize, legend, overlay
from engine.explain.regions import classify, measure
from engine.models import ImageSource, ScoreResult, registry
from tests.synthetic import texture

SIZE = 256


@pytest.fixture(scope="module")
def fitted() -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    goods = [texture(rng, SIZE) for _ in range(4)]
    for radius in (8, 18, 28, 38):  # a mark only training image 2 has, centred at x 112, y 144
        cv2.circle(goods[2], (112, 144), radius, (230, 60, 40), 3)
    model = registry.create("kensa_patchcore", image_size=SIZE, max_bank=40_000)
    model.fit(goods, sources=[ImageSource(f"/train/good_{i}.png", f"sha{i}") for i in range(4)])
    normal = [float(model.score([texture(rng, SIZE)]).scores[0]) for _ in range(6)]
    return {"model": model, "goods": goods, "normal": normal, "threshold": max(normal) * 1.1,
            "rng": rng}


def iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    inter = (max(0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0, min(a[3], b[3]) - max(a[1], b[1])))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def test_top_region_boxes_the_drawn_defect(fitted: dict) -> None:
    image = texture(fitted["rng"], SIZE)
    box = (80, 100, 152, 172)
    cv2.rectangle(image, box[:2], (box[2] - 1, box[3] - 1), (20, 20, 25), -1)
    e = explain_arrays(fitted["model"], image, fitted["threshold"], fitted["normal"])
    assert e.verdict == "defect"
    assert iou(e.regions[0].shaped.box, box) > 0.5


def test_score_and_map_equal_plain_scoring(fitted: dict) -> None:
    image = texture(fitted["rng"], SIZE)
    cv2.circle(image, (60, 60), 8, (20, 20, 25), -1)
    e = explain_arrays(fitted["model"], image, fitted["threshold"], fitted["normal"], k=4)
    plain = fitted["model"].score([image])
    assert e.score == pytest.approx(float(plain.scores[0]), rel=1e-6)
    np.testing.assert_allclose(e.score_map, plain.maps[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "draw"), [
    ("spot", lambda im: cv2.circle(im, (80, 120), 10, (20, 20, 25), -1)),
    ("line", lambda im: cv2.line(im, (40, 60), (200, 180), (250, 240, 200), 3)),
])
def test_drawn_spot_and_line_get_their_kind(fitted: dict, kind: str, draw) -> None:
    image = texture(fitted["rng"], SIZE)
    draw(image)
    e = explain_arrays(fitted["model"], image, fitted["threshold"], fitted["normal"])
    assert e.regions[0].shaped.kind == kind, e.regions[0].shaped.measurements


def test_copied_patch_maps_back_to_its_training_file_and_position(fitted: dict) -> None:
    model, goods = fitted["model"], fitted["goods"]
    query = texture(np.random.default_rng(99), SIZE)
    # the block of training image 2 around its mark (x 64..160, y 96..192) pasted at x 160, y 32
    query[32:128, 160:256] = goods[2][96:192, 64:160]
    evidence = model.explain_patches(query, k=3)
    records = {r.id: r for r in model.records}
    loaded: list[str] = []

    def load(path: str, sha: str) -> np.ndarray:
        loaded.append(path)
        return goods[int(path[-5])]

    cell = (80 // 8, 208 // 8)  # centre of the pasted block in the query: y 80, x 208
    found = neighbours_of(evidence, cell, records, load)
    nearest = found[0]
    assert nearest.record.path == "/train/good_2.png"
    assert nearest.record.view == "rot0"
    assert (nearest.row, nearest.col) == (144 // 8, 112 // 8)  # the same place in good_2
    x0, y0, x1, y1 = nearest.box
    np.testing.assert_array_equal(nearest.crop, goods[2][y0:y1, x0:x1])
    assert "/train/good_2.png" in loaded
    assert [n.distance for n in found] == sorted(n.distance for n in found)


def test_conformal_p_value_and_false_alarm_rate_by_hand() -> None:
    good = [1.0, 2.0, 3.0, 4.0]
    assert conformal_p_value(2.5, good) == pytest.approx(3 / 5)  # 3 and 4 are >= 2.5
    assert conformal_p_value(2.0, good) == pytest.approx(4 / 5)  # ties count
    assert conformal_p_value(9.0, good) == pytest.approx(1 / 5)  # the floor 1 / (n + 1)
    assert false_alarm_rate(3.0, good) == pytest.approx(2 / 4)
    assert false_alarm_rate(4.5, good) == 0.0
    assert knn_spread([2.0, 2.0, 2.0]) == 0.0
    assert knn_spread([1.0, 3.0]) == pytest.approx(0.5)  # std 1 / mean 2
    assert np.isnan(knn_spread([1.0]))


def test_shape_rules_on_drawn_masks() -> None:
    disc = np.zeros((200, 200), bool)
    cv2.circle(disc.view(np.uint8), (100, 100), 12, 1, -1)
    bar = np.zeros((200, 200), np.uint8)
    cv2.line(bar, (20, 20), (180, 150), 1, 9)
    blob = np.zeros((200, 200), np.uint8)
    cv2.circle(blob, (100, 100), 70, 1, -1)
    assert classify(measure(disc, (200, 200))) == "spot"
    assert classify(measure(bar.astype(bool), (200, 200))) == "line"
    big = measure(blob.astype(bool), (200, 200))
    assert classify(big) == "area" and big["elongation"] < 1.1
    assert big["area_pct"] == pytest.approx(100 * blob.sum() / 200 ** 2)


def test_colour_scale_is_fixed_and_centred_on_the_threshold() -> None:
    a = colorize(np.array([[0.5, 0.9]], np.float32))
    b = colorize(np.array([[0.9, 0.5, 0.1]], np.float32))
    assert (a[0, 0] == b[0, 1]).all() and (a[0, 1] == b[0, 0]).all()
    mid = cv2.cvtColor(cv2.applyColorMap(np.array([[128]], np.uint8), cv2.COLORMAP_JET),
                       cv2.COLOR_BGR2RGB)
    assert (a[0, 0] == mid[0, 0]).all()
    image = np.full((40, 40, 3), 100, np.uint8)
    shown = overlay(image, np.full((40, 40), 0.5, np.float32), alpha=0.0, boxes=[(5, 5, 20, 20)])
    assert (shown[30, 30] == 100).all() and (shown[5, 10] == (255, 0, 255)).all()
    assert legend().shape[2] == 3


class _ScoreOnly:
    """A model with the plain contract only (no bank positions), as stock anomalib is."""

    capabilities = frozenset()

    def score(self, images):
        h, w = images[0].shape[:2]
        m = np.zeros((h, w), np.float32)
        m[10:30, 10:30] = 5.0
        return ScoreResult(np.array([5.0]), [m])


def test_models_without_nearest_patches_are_explained_without_neighbours() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    e = explain_arrays(_ScoreOnly(), image, 1.0, [0.1, 0.2, 0.3])
    assert e.verdict == "defect" and e.evidence is None and np.isnan(e.knn_spread)
    assert e.regions[0].shaped.box == (10, 10, 30, 30) and e.regions[0].neighbours == []
    assert e.p_value == pytest.approx(1 / 4)

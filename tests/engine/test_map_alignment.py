"""The anomaly map must sit on the defect, not a cell down and right of it.

A drawn dark square on a generated texture at several positions; the map's peak and its
centroid above half height must lie within 3 px of the square's centre at a 256-px working
size (before the cells were placed at their receptive fields' centres: ~11 px, both axes). The
geometry is checked with both stages at full weight; at the default ``fine_weight`` the
stride-16 stage's wider response moves the centroid by up to 5 px (peak still within 3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.features import upsample_onto_fine
from engine.models.fewshot import FewShotConfig, FewShotPatchCore, view_provenance
from engine.models.preprocess import cell_at, cell_span, grid_to_work
from tests.synthetic import texture

SIZE, SIDE = 256, 24
CENTRES = [(64, 64), (128, 96), (180, 160), (96, 200)]


@pytest.fixture(scope="module", params=[(1.0, 3.0), (None, 6.0)], ids=["both_stages", "default"])
def model_and_rng(request) -> tuple[FewShotPatchCore, np.random.Generator, float]:
    """(model, rng, centroid tolerance in px) for fine_weight 1 and the default weight."""
    weight, tolerance = request.param
    rng = np.random.default_rng(0)
    options = {} if weight is None else {"fine_weight": weight}
    model = FewShotPatchCore(FewShotConfig(image_size=SIZE, views="none", **options))
    model.fit([texture(rng, SIZE) for _ in range(3)])
    return model, rng, tolerance


@pytest.mark.parametrize("centre", CENTRES)
def test_map_peak_and_centroid_on_the_defect(model_and_rng, centre: tuple[int, int]) -> None:
    model, rng, tolerance = model_and_rng
    cx, cy = centre
    image = texture(rng, SIZE)
    half = SIDE // 2
    image[cy - half:cy + half, cx - half:cx + half] = (20, 20, 25)
    true_x, true_y = cx - 0.5, cy - 0.5  # pixel-centre coordinates of the square's middle
    _, amap = model.score_one(image)
    py, px = np.unravel_index(np.argmax(amap), amap.shape)
    base, top = float(np.median(amap)), float(amap.max())
    weight = np.clip(amap - (base + 0.5 * (top - base)), 0, None)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    my, mx = (weight * ys).sum() / weight.sum(), (weight * xs).sum() / weight.sum()
    assert abs(px - true_x) <= 3 and abs(py - true_y) <= 3, (px, py, centre)
    assert abs(mx - true_x) <= tolerance and abs(my - true_y) <= tolerance, (mx, my, centre)


def test_grid_to_work_is_a_plain_resize_at_centre_half() -> None:
    import cv2

    grid = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    expected = cv2.resize(grid, (56, 40), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(grid_to_work(grid, 40, 56, centre=0.5), expected, atol=1e-5)
    shifted = grid_to_work(grid, 40, 56)  # cell i centred on pixel edge 8i - 4: one cell up-left
    np.testing.assert_allclose(shifted[:-8, :-8], expected[8:, 8:], atol=1e-5)


def test_cell_span_and_cell_at_agree_with_the_map() -> None:
    lo, hi = cell_span(3, 10, 80)
    assert (lo, hi) == (16.0, 24.0) and cell_at(20.0, 10, 80) == 3
    assert cell_at(-5.0, 10, 80) == 0 and cell_at(1e6, 10, 80) == 9


def test_coarse_cell_j_lands_on_fine_cell_2j() -> None:
    coarse = torch.arange(12.0).view(1, 1, 3, 4)
    fine = upsample_onto_fine(coarse, (6, 8))
    assert torch.equal(fine[0, 0, ::2, ::2], coarse[0, 0])
    assert fine[0, 0, 1, 0] == (coarse[0, 0, 0, 0] + coarse[0, 0, 1, 0]) / 2
    assert torch.equal(fine[0, 0, 5], fine[0, 0, 4])  # last coarse row held


def test_mirrored_views_point_where_the_cell_looks() -> None:
    flipped = view_provenance(3, 6, (0, True)).view(3, 6, 2)
    # viewed column c looks at original column 6 - c + 1 (clipped), not the index mirror 5 - c
    assert flipped[0, :, 1].tolist() == [5, 5, 5, 4, 3, 2]
    assert torch.equal(flipped[..., 0], torch.arange(3).view(3, 1).expand(3, 6))
    assert torch.equal(view_provenance(3, 6, (0, False)).view(3, 6, 2)[0, :, 1], torch.arange(6))


def test_saved_models_keep_their_feature_alignment(model_and_rng, tmp_path) -> None:
    import json

    model, _, _ = model_and_rng
    model.save(tmp_path)
    assert FewShotPatchCore.load(tmp_path).extractor.align_coarse
    payload = json.loads((tmp_path / "model.json").read_text())
    del payload["feature_alignment"]  # a bank built before the stages were aligned
    (tmp_path / "model.json").write_text(json.dumps(payload))
    assert not FewShotPatchCore.load(tmp_path).extractor.align_coarse

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models.augment_views import apply_view, grid_coordinates, views_for
from engine.models.preprocess import (
    area_matrix,
    resize_map,
    resized_shape,
    shrink,
    to_tensor,
)


def test_resize_keeps_aspect_and_snaps_to_stride() -> None:
    assert resized_shape(600, 300, 320) == (320, 160)
    h, w = resized_shape(250, 599, 320)
    assert w == 320 and h % 8 == 0 and abs(h / w - 250 / 599) < 0.03


def test_to_tensor_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        to_tensor(np.zeros((10, 10), np.uint8), 64)


def test_resize_map_back_to_original() -> None:
    assert resize_map(np.ones((8, 4), np.float32), 100, 50).shape == (100, 50)


@pytest.mark.parametrize("view", views_for("dihedral", 1))
def test_provenance_maps_viewed_cells_back_to_original(view: tuple[int, bool]) -> None:
    """A viewed grid cell must point at the original cell holding the same content."""
    h, w = 3, 5
    grid = torch.arange(h * w).view(1, h, w)
    viewed = apply_view(grid, view)[0].reshape(-1)
    coords = grid_coordinates(h, w, view)
    assert torch.equal(grid[0, coords[:, 0], coords[:, 1]], viewed)


def test_auto_views_shrink_with_more_shots() -> None:
    counts = [len(views_for("auto", k)) for k in (1, 4, 8, 16, 64)]
    assert counts == sorted(counts, reverse=True) and counts[0] == 8 and counts[-1] == 1


@pytest.mark.parametrize(("src", "dst"), [(170, 96), (160, 80), (97, 96), (50, 50)])
def test_shrink_is_the_area_matrix_on_each_axis(src: int, dst: int) -> None:
    """The app shrinks with OpenCV, an exported graph with the matrices: the same numbers."""
    tensor = torch.rand(1, 3, src, src + 13, generator=torch.Generator().manual_seed(src))
    width = round(dst * (src + 13) / src)
    rows = torch.from_numpy(area_matrix(src, dst)).float()
    cols = torch.from_numpy(area_matrix(src + 13, width)).float()
    got = shrink(tensor, dst, width)
    assert got.shape == (1, 3, dst, width)
    torch.testing.assert_close(got, rows @ tensor @ cols.T, rtol=0, atol=1e-5)
    np.testing.assert_allclose(area_matrix(src, dst).sum(axis=1), 1.0)


def test_area_matrix_only_shrinks() -> None:
    with pytest.raises(ValueError, match="shrinks"):
        area_matrix(80, 96)

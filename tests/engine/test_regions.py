from __future__ import annotations

import numpy as np
import pytest

from engine.regions import find_regions


def test_regions_box_each_blob_with_its_peak() -> None:
    score = np.zeros((50, 60), np.float32)
    score[5:15, 10:20] = 0.8
    score[30:40, 40:55] = 0.6
    score[33, 45] = 0.9
    score[0, 0] = 1.0  # a single pixel is a speck, not a region
    regions = find_regions(score, 0.5)
    assert [(r.x, r.y, r.width, r.height) for r in regions] == [(40, 30, 15, 10), (10, 5, 10, 10)]
    assert regions[0].peak == pytest.approx(0.9)
    assert regions[1].area == 100


def test_regions_need_2d_map() -> None:
    with pytest.raises(ValueError, match="2-D"):
        find_regions(np.zeros((2, 2, 2)), 0.5)

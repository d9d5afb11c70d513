"""Nearest normal patches: from a region's most unusual feature cell to training-image crops.

Bank vectors carry provenance (record id, row, col) on the ORIGINAL training image's feature
grid whatever flip/rotation they were found in, so a neighbour is a box of a real, upright
training image. A patch vector averages its 3 x 3 cell neighbourhood, so the box shown is that
neighbourhood (``CONTEXT`` cells around the cell), for the query as for the neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from engine.models.base import PatchEvidence, ProvenanceRecord
from engine.models.preprocess import cell_at, cell_span

#: Cells of context on each side of a patch's own cell in crops (its 3 x 3 aggregation).
CONTEXT = 1

#: ``load(path, sha256)``: the training image as RGB uint8, or None when it is gone or changed.
LoadFn = Callable[[str, str], "np.ndarray | None"]


@dataclass
class Neighbour:
    """One bank vector near a query cell; ``crop`` is empty (0 x 0) when the file is gone."""

    record_id: int
    record: ProvenanceRecord | None
    row: int
    col: int
    box: tuple[int, int, int, int]
    distance: float
    crop: np.ndarray


def cell_box(row: int, col: int, grid: tuple[int, int], size: tuple[int, int],
             context: int = CONTEXT) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels of an image of ``size`` (h, w) for cell (row, col) of its
    ``grid`` (gh, gw), widened by ``context`` cells and clipped to the image; the cell sits
    where the anomaly map draws it (``engine.models.preprocess.CELL_CENTRE``)."""
    (gh, gw), (h, w) = grid, size
    top, bottom = cell_span(row, gh, h, context)
    left, right = cell_span(col, gw, w, context)
    y0, y1 = max(0, math.floor(top)), min(h, math.ceil(bottom))
    x0, x1 = max(0, math.floor(left)), min(w, math.ceil(right))
    return (x0, y0, x1, y1)


def crop(image: np.ndarray | None, box: tuple[int, int, int, int]) -> np.ndarray:
    if image is None:
        return np.zeros((0, 0, 3), np.uint8)
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def peak_cell(evidence: PatchEvidence, mask: np.ndarray, offset: tuple[int, int],
              size: tuple[int, int]) -> tuple[int, int]:
    """The feature cell of a region that is farthest from every normal patch.

    Candidates are the cells whose centre lies on the region's pixels (``mask`` over the box
    at ``offset`` = (x, y)); a region thinner than a cell falls back to the cell under the
    region's centre of mass.
    """
    gh, gw = evidence.distances.shape[:2]
    h, w = size
    x, y = offset
    # cell centres as the map draws them, held inside the image
    rows = [min(h - 1, max(0, math.floor(sum(cell_span(r, gh, h)) / 2))) for r in range(gh)]
    cols = [min(w - 1, max(0, math.floor(sum(cell_span(c, gw, w)) / 2))) for c in range(gw)]
    best, best_d = None, -1.0
    for r, py in enumerate(rows):
        if not y <= py < y + mask.shape[0]:
            continue
        for c, px in enumerate(cols):
            if x <= px < x + mask.shape[1] and mask[py - y, px - x]:
                d = float(evidence.distances[r, c, 0])
                if d > best_d:
                    best, best_d = (r, c), d
    if best is None:
        ys, xs = np.nonzero(mask)
        cy, cx = y + float(ys.mean()) + 0.5, x + float(xs.mean()) + 0.5  # edge coordinates
        best = (cell_at(cy, gh, h), cell_at(cx, gw, w))
    return best


def neighbours_of(evidence: PatchEvidence, cell: tuple[int, int],
                  records: Mapping[int, ProvenanceRecord], load: LoadFn) -> list[Neighbour]:
    """The k nearest bank vectors of ``cell``, each as a crop of its training image."""
    r, c = cell
    out = []
    for j in range(evidence.distances.shape[2]):
        record_id, row, col = (int(v) for v in evidence.provenance[r, c, j])
        record = records.get(record_id)
        if record is None:
            box, image = (0, 0, 0, 0), None
        else:
            box = cell_box(row, col, (record.grid_height, record.grid_width),
                           (record.height, record.width))
            image = load(record.path, record.sha256)
        out.append(Neighbour(record_id, record, row, col, box,
                             float(evidence.distances[r, c, j]), crop(image, box)))
    return out

"""Flipped and rotated copies of the few good shots, for the memory bank.

With one to a few good images the bank has seen each texture in one orientation only; for
parts whose surface has no preferred direction the eight dihedral views multiply the normal
variety at no labelling cost. The copies are dropped as the shot count grows, where they only
cost time. Provenance is mapped back to the original orientation so that "nearest normal patch"
always points at a real location of a real training image.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import cv2
import numpy as np
import torch

ViewMode = Literal["none", "flips", "dihedral", "auto", "any_angle"]

#: the in-between turns of ``any_angle`` (degrees, counter-clockwise); with the four quarter
#: turns a part is remembered every 30 degrees, about what 3x3-pooled stride-8 features
#: tolerate of a turn before a good edge reads as a defect
ANY_ANGLE_STEPS = (30, 60, 120, 150, 210, 240, 300, 330)

# (k quarter turns, horizontal flip)
_DIHEDRAL = [(0, False), (1, False), (2, False), (3, False),
             (0, True), (1, True), (2, True), (3, True)]
_FLIPS = [(0, False), (0, True), (2, False), (2, True)]


def views_for(mode: ViewMode, n_shots: int) -> list[tuple[int, bool]]:
    """Which views to use; ``auto`` keeps ~32 views of images in the bank in total."""
    if mode == "none":
        return [(0, False)]
    if mode == "flips":
        return list(_FLIPS)
    if mode == "dihedral":
        return list(_DIHEDRAL)
    if mode == "any_angle":  # turns only: a part lying on a table is never its mirror image
        return [(turns, False) for turns in range(4)]
    if mode != "auto":
        raise ValueError(f"view mode must be none, flips, dihedral, auto or any_angle, "
                         f"not {mode!r}")
    if n_shots <= 4:
        return list(_DIHEDRAL)
    if n_shots <= 8:
        return list(_FLIPS)
    if n_shots <= 16:
        return [(0, False), (2, False)]
    return [(0, False)]


def apply_view(tensor: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """Apply a view to the last two dims of ``tensor``."""
    turns, flip = view
    out = torch.flip(tensor, dims=(-1,)) if flip else tensor
    return torch.rot90(out, turns, dims=(-2, -1)) if turns else out


def iter_views(image: torch.Tensor, views: list[tuple[int, bool]]
               ) -> Iterator[tuple[torch.Tensor, tuple[int, bool]]]:
    for view in views:
        yield apply_view(image, view), view


def grid_coordinates(height: int, width: int, view: tuple[int, bool]) -> torch.Tensor:
    """[h'*w', 2] (row, col) in the ORIGINAL grid for each cell of the viewed grid."""
    rows = torch.arange(height).view(height, 1).expand(height, width)
    cols = torch.arange(width).view(1, width).expand(height, width)
    coords = torch.stack([rows, cols])  # [2,h,w]
    viewed = apply_view(coords, view)
    return viewed.reshape(2, -1).T.contiguous()


def angles_for(mode: ViewMode) -> list[int]:
    """The turns that are no multiple of 90 degrees (``any_angle`` only), see :func:`turned`."""
    return list(ANY_ANGLE_STEPS) if mode == "any_angle" else []


def turned(image: torch.Tensor, degrees: float, stride: int, centre: float
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``image`` [1,3,h,w] turned by ``degrees`` on a canvas that holds all of it.

    Returns the turned image (sides multiples of ``stride``; the corners outside the part are
    filled by repeating its edge), and for every cell of its feature grid the ORIGINAL grid
    (row, col) it looks at [n, 2] and whether that point lies inside the original image [n].
    Cells that look at the fill are left out of the bank by the caller: they describe nothing
    that was photographed. ``centre`` is where a cell's evidence sits, in cells
    (``engine.models.preprocess.CELL_CENTRE``).
    """
    _, _, h, w = image.shape
    rad = np.deg2rad(degrees)
    cos, sin = abs(np.cos(rad)), abs(np.sin(rad))
    big_w = int(np.ceil((w * cos + h * sin) / stride)) * stride
    big_h = int(np.ceil((w * sin + h * cos) / stride)) * stride
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    matrix[:, 2] += (big_w / 2 - w / 2, big_h / 2 - h / 2)
    pixels = image[0].permute(1, 2, 0).cpu().numpy()
    out = cv2.warpAffine(pixels, matrix, (big_w, big_h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    viewed = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]
    gh, gw = big_h // stride, big_w // stride
    rows, cols = np.mgrid[0:gh, 0:gw]
    # cell centres as edge coordinates; OpenCV's matrices work on pixel indices (edge - 0.5)
    points = np.stack([(cols.ravel() + centre) * stride, (rows.ravel() + centre) * stride], 1)
    inverse = cv2.invertAffineTransform(matrix)
    back = (points - 0.5) @ inverse[:, :2].T + inverse[:, 2] + 0.5
    inside = ((back[:, 0] >= 0) & (back[:, 0] <= w) & (back[:, 1] >= 0) & (back[:, 1] <= h))
    grid = np.stack([np.clip(np.round(back[:, 1] / stride - centre), 0, h // stride - 1),
                     np.clip(np.round(back[:, 0] / stride - centre), 0, w // stride - 1)], 1)
    return (viewed.to(image.dtype), torch.from_numpy(grid.astype(np.int64)),
            torch.from_numpy(inside))

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

import torch

ViewMode = Literal["none", "flips", "dihedral", "auto"]

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
    if mode != "auto":
        raise ValueError(f"view mode must be none, flips, dihedral or auto, not {mode!r}")
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

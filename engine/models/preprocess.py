"""Image -> tensor conversion shared by the models.

Resizing keeps the aspect ratio: industrial parts are often long and thin, and squashing them
to a square distorts the very textures the memory bank compares.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

#: Feature-grid stride of the stride-8 stage; input sides are rounded to a multiple of it.
GRID_STRIDE = 8

#: Where a feature cell's evidence sits, in cells: cell ``i`` is centred on the working-image
#: edge coordinate ``GRID_STRIDE * (i + CELL_CENTRE)`` (pixel k spans [k, k + 1)). A plain
#: resize of the grid (``cv2.resize``) assumes 0.5, the middle of pixels 8i..8i+7; that put
#: every anomaly map ~10 working pixels down and right of its defect. Measured (perturbation
#: probe, tests/engine/test_map_alignment.py):
#:
#: - geometry, half a cell: the backbones pad their stride-2 convolutions symmetrically
#:   (k // 2), so a stride-8 cell is centred on pixel 8i, not 8i + 3.5;
#: - the bundled EfficientNet-Lite weights, about half a cell more: the stride-8 stage responds
#:   around 8i - 4 and the stride-16 stage around 16j - 6 (inherent to the learned kernels).
#:
#: Cell i is therefore drawn centred on 8i - 4 (the corner of the resize's cells i-1 and i):
#: one half-cell correction per cause, applied once where the working-size map is built
#: (:func:`grid_to_work`) and mirrored by the crops of nearest patches (:func:`cell_span`).
CELL_CENTRE = -0.5


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Aspect-preserving size whose longer side is ``long_side``, sides multiples of 8 (>= 32)."""
    scale = long_side / max(height, width)

    def snap(side: int) -> int:
        return max(32, int(round(side * scale / GRID_STRIDE)) * GRID_STRIDE)

    return snap(height), snap(width)


def to_tensor(image: np.ndarray, long_side: int) -> torch.Tensor:
    """RGB uint8 H x W x 3 -> float [1,3,h,w] in [0,1] at the aspect-preserving working size."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image H x W x 3, got shape {image.shape} dtype {image.dtype}"
        )
    h, w = resized_shape(image.shape[0], image.shape[1], long_side)
    shrinking = h * w < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (w, h), interpolation=interpolation)
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float() / 255.0


def _axis(n_out: int, n_cells: int, centre: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: output pixel -> (lower cell, upper cell, upper weight)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_cells / n_out - centre, 0, n_cells - 1)
    lo = np.floor(src).astype(np.intp)
    return lo, np.minimum(lo + 1, n_cells - 1), (src - lo).astype(np.float32)


def grid_to_work(grid_map: np.ndarray, height: int, width: int,
                 centre: float = CELL_CENTRE) -> np.ndarray:
    """A feature-grid map [gh, gw] -> [height, width], each cell at its receptive field's centre.

    Bilinear between cell centres, edges held (as ``cv2.resize``, which is ``centre=0.5``).
    """
    grid_map = np.asarray(grid_map, dtype=np.float32)
    lo, hi, w = _axis(height, grid_map.shape[0], centre)
    rows = grid_map[lo] * (1 - w)[:, None] + grid_map[hi] * w[:, None]
    lo, hi, w = _axis(width, grid_map.shape[1], centre)
    return np.ascontiguousarray(rows[:, lo] * (1 - w) + rows[:, hi] * w, dtype=np.float32)


def cell_span(index: int, cells: int, pixels: int, context: float = 0.0,
              centre: float = CELL_CENTRE) -> tuple[float, float]:
    """Pixel span (start, end) of cell ``index`` of ``cells`` on a side ``pixels`` long,
    widened by ``context`` cells each way, centred where :func:`grid_to_work` draws it."""
    size = pixels / cells
    return ((index + centre - 0.5 - context) * size, (index + centre + 0.5 + context) * size)


def cell_at(position: float, cells: int, pixels: int, centre: float = CELL_CENTRE) -> int:
    """The cell whose centre is nearest to ``position`` (edge coordinate, 0..pixels)."""
    return int(np.clip(np.floor(position * cells / pixels - centre + 0.5), 0, cells - 1))


def resize_map(score_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bring an anomaly map back to the original image size (bilinear)."""
    return cv2.resize(score_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def area_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] float64: :func:`shrink` along one axis, as a matrix (for exported graphs).

    Output pixel j averages the source span [j * src / dst, (j + 1) * src / dst), each source
    pixel weighted by how much of it lies inside: OpenCV's ``INTER_AREA`` rule, which
    :func:`shrink` runs (a dense matrix product costs ~60 ms on an 850-px image, the banded
    OpenCV loop ~1 ms); tests/engine/test_preprocess_views.py holds the two equal.
    """
    if not 0 < dst <= src:
        raise ValueError(f"area_matrix shrinks: need 0 < dst <= src, got src={src}, dst={dst}")
    step = src / dst
    starts = np.arange(dst)[:, None] * step
    pixels = np.arange(src)[None, :]
    overlap = np.clip(np.minimum(starts + step, pixels + 1) - np.maximum(starts, pixels), 0, None)
    return overlap / step


def shrink(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[1,C,H,W] float -> [1,C,height,width] by area averaging (OpenCV ``INTER_AREA``)."""
    image = tensor[0].permute(1, 2, 0).float().cpu().numpy()
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:  # OpenCV drops a single channel's axis
        small = small[..., None]
    return torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None].to(tensor)

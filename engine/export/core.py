"""Kensa's scoring as one ``nn.Module``: the graph that ONNX and OpenVINO files hold.

``FewShotPatchCore.score_one`` mixes torch (features, kNN) with numpy and OpenCV (the map's
upsampling and blur), and sizes everything from the image at hand. An exported file needs one
traceable graph with fixed shapes, so :class:`InferenceCore` rebuilds the same pipeline for ONE
working size:

- preparation (grey, intensity matching) and the model's own feature extractor, called
  unchanged (``PatchFeatureExtractor.forward`` without its ``inference_mode`` wrapper), so a
  change to the features reaches exports by itself;
- the model's own ``FeatureAlignment`` (``normalization="batch"``, ``style_align``) when it has
  one: per-channel affine maps whose training statistics are buffers;
- the memory bank as a registered buffer, exact kNN as one matmul + top-k, the winners'
  distances recomputed directly (as ``MemoryBank.knn`` does, so ties and rounding agree);
- ``grid_to_work`` and ``cv2.GaussianBlur`` are both linear and separable, so each is read off
  the real function as a matrix (one call per basis vector) and the two are folded into one
  matrix per axis: ``work = Mh @ grid @ Mw^T``. OpenCV's kernel size, kernel and
  BORDER_REFLECT_101 are therefore OpenCV's own, not a re-implementation that could drift;
- a working size above ``image_size`` (images larger than the shots) carries the coarse view
  of ``FewShotPatchCore._coarse_view``: the input shrunk by area matrices equal to the app's
  OpenCV ``INTER_AREA`` (``engine.models.preprocess.area_matrix``), scored, its map brought
  back by matrices read off ``resize_map``, capped at the score and averaged in.

Nothing here decides anything on the data in Python, so tracing records the whole computation.
The parity test compares against ``model.score`` (tests/engine/export/test_core.py): any drift
of the app's pipeline from this copy fails there, and an export is refused (engine.export.parity).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch import nn

from engine.features import FeatureAlignment, PatchFeatureExtractor
from engine.models.colour import to_gray
from engine.models.preprocess import GRID_STRIDE, area_matrix, grid_to_work, resize_map

if TYPE_CHECKING:
    from engine.models.fewshot import FewShotPatchCore

#: the floor on the std in intensity matching (``FewShotPatchCore._match_intensity``)
MIN_STD = 1e-3

# ``PatchFeatureExtractor.forward`` is wrapped in ``torch.inference_mode``; the core calls the
# body alone, so the traced graph holds plain operations and no inference-mode switch (the
# contract: no inference-mode decorator in the traced path). The export tests fail if it drifts.
_EXTRACT = getattr(PatchFeatureExtractor.forward, "__wrapped__", PatchFeatureExtractor.forward)


def _read_off(axis: Callable[[np.ndarray], np.ndarray], src: int, dst: int) -> np.ndarray:
    """[dst, src] float64: a linear function of one axis, as a matrix.

    Column j is ``axis`` applied to the j-th unit vector, a ``src x 1`` image (a 1-wide other
    axis is held as it is), so the matrix is the app's own function, whatever its details.
    """
    out = np.empty((dst, src), dtype=np.float64)
    for j in range(src):
        unit = np.zeros((src, 1), dtype=np.float32)
        unit[j, 0] = 1.0
        out[:, j] = axis(unit)[:, 0]
    return out


def upsample_matrix(cells: int, pixels: int) -> np.ndarray:
    """[pixels, cells] float64: ``grid_to_work`` along one axis (its cell-centre rule too)."""
    return _read_off(lambda unit: grid_to_work(unit, pixels, 1), cells, pixels)


def resize_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] float64: ``resize_map`` (OpenCV bilinear) along one axis."""
    return _read_off(lambda unit: resize_map(unit, dst, 1), src, dst)


def blur_matrix(pixels: int, sigma: float) -> np.ndarray:
    """[pixels, pixels] float64: ``cv2.GaussianBlur(x, (0, 0), sigma)`` along one axis.

    Read off OpenCV on a ``pixels x 1`` image (the 1-wide axis reflects onto itself, so only
    this axis is blurred): OpenCV's kernel size rule, kernel values and BORDER_REFLECT_101
    come with it. ``sigma <= 0``: no blur, as in ``score_one``.
    """
    if sigma <= 0:
        return np.eye(pixels)
    return _read_off(lambda unit: cv2.GaussianBlur(unit, (0, 0), sigma), pixels, pixels)


class InferenceCore(nn.Module):
    """``[B,3,H,W]`` float in [0,1] at the working size -> ``(scores [B], maps [B,1,H,W])``.

    Build it with :meth:`from_model`; ``H`` and ``W`` are what ``to_tensor`` gives for the
    product's images (multiples of 8). Scores and maps are raw (not normalized), like
    ``model.score``; maps stay at the working size (the caller resizes to the original).
    """

    def __init__(self, extractor: PatchFeatureExtractor, bank: torch.Tensor, height: int,
                 width: int, *, gray: bool, match_intensity: bool,
                 intensity: tuple[float, float], n_neighbors: int, blur_sigma: float,
                 alignment: FeatureAlignment | None = None,
                 coarse: tuple[int, int] | None = None) -> None:
        super().__init__()
        if height % GRID_STRIDE or width % GRID_STRIDE or min(height, width) < 32:
            raise ValueError(f"working size {height}x{width}: both sides must be multiples of "
                             f"{GRID_STRIDE} and at least 32 (what to_tensor gives)")
        if bank.ndim != 2 or bank.shape[0] < n_neighbors:
            raise ValueError(f"the bank {tuple(bank.shape)} must be [N, D] with N >= "
                             f"n_neighbors = {n_neighbors}")
        self.extractor = extractor.eval()
        #: None: no submodule, so the graph of a model without alignment is what it was
        self.alignment = alignment
        self.height, self.width = int(height), int(width)
        self.gray = bool(gray)
        self.match_intensity = bool(match_intensity)
        self.target_mean, self.target_std = (float(v) for v in intensity)
        self.n_neighbors = int(n_neighbors)
        self.blur_sigma = float(blur_sigma)
        # a copy of its own (a few MB): ``.to`` returns the model's own tensor when it is
        # already on the CPU, and an in-place change to the graph's bank would then change
        # what the app scores with
        vectors = bank.detach().to("cpu", torch.float32).contiguous().clone()
        self.register_buffer("bank", vectors)
        self.register_buffer("bank_sq", vectors.square().sum(1))
        gh, gw = height // GRID_STRIDE, width // GRID_STRIDE
        rows = blur_matrix(height, blur_sigma) @ upsample_matrix(gh, height)
        cols = blur_matrix(width, blur_sigma) @ upsample_matrix(gw, width)
        self.register_buffer("rows", torch.from_numpy(rows.astype(np.float32)))
        self.register_buffer("cols_t", torch.from_numpy(np.ascontiguousarray(cols.T,
                                                                             np.float32)))
        #: the coarse view's size (``FewShotPatchCore.coarse_shape``), None without one
        self.coarse = None if coarse is None else (int(coarse[0]), int(coarse[1]))
        if self.coarse is not None:
            nh, nw = self.coarse
            for name, matrix in (
                ("shrink_rows", area_matrix(height, nh)),
                ("shrink_cols_t", area_matrix(width, nw).T),
                ("coarse_rows", resize_matrix(nh, height) @ blur_matrix(nh, blur_sigma)
                 @ upsample_matrix(nh // GRID_STRIDE, nh)),
                ("coarse_cols_t", (resize_matrix(nw, width) @ blur_matrix(nw, blur_sigma)
                                    @ upsample_matrix(nw // GRID_STRIDE, nw)).T),
            ):
                self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(matrix,
                                                                                 np.float32)))

    @classmethod
    def from_model(cls, model: FewShotPatchCore, height: int, width: int) -> InferenceCore:
        """The core of a fitted model at working size ``height`` x ``width`` (CPU copy).

        Reads only what scoring reads: the extractor, the bank, ``state.gray``,
        ``state.intensity``, the feature alignment (``model.feature_alignment()``) and the
        config's ``match_intensity``, ``n_neighbors`` and ``blur_sigma``, and the coarse view
        (``model.coarse_shape``) of a working size above ``image_size``. A CPU extractor is
        shared, not copied (it is never trained).
        """
        if model.bank is None:
            raise ValueError("the model has no memory bank yet: fit or load it before export")
        config = model.config
        extractor = model.extractor
        if any(t.device.type != "cpu" for t in extractor.parameters()):
            extractor = copy.deepcopy(extractor)  # moving it would move the model's own
        core = cls(extractor, model.bank.vectors, height, width,
                   gray=model.state.gray, match_intensity=config.match_intensity,
                   intensity=model.state.intensity, n_neighbors=config.n_neighbors,
                   blur_sigma=config.blur_sigma, alignment=model.feature_alignment(),
                   coarse=model.coarse_shape(height, width))
        return core.to("cpu")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return 3, self.height, self.width

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Grey and intensity matching exactly as ``FewShotPatchCore._prepare``."""
        if self.gray:
            images = to_gray(images)
        if self.match_intensity:
            n = images.shape[2] * images.shape[3]
            mean = images.mean(dim=(2, 3), keepdim=True)
            # unbiased std written out: one graph for every exporter (torch's std, ddof 1)
            var = (images - mean).square().sum(dim=(2, 3), keepdim=True) / (n - 1)
            std = var.sqrt().clamp_min(MIN_STD)
            images = ((images - mean) / std * self.target_std + self.target_mean).clamp(0, 1)
        return images

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """[B,D,gh,gw] -> [B,gh,gw]: mean distance to the ``n_neighbors`` nearest bank rows.

        Candidates as ``MemoryBank._block_knn`` ranks them (||b||² - 2 q·b in one addmm: ||q||²
        does not change a row's order), then the winners' distances recomputed exactly.
        """
        b, d, gh, gw = features.shape
        queries = features.flatten(2).transpose(1, 2).reshape(-1, d)  # [B*M, D]
        ranked = torch.addmm(self.bank_sq, queries, self.bank.T, alpha=-2.0)  # [B*M, N]
        # top-k also for k = 1: OpenVINO's CPU ArgMin took ~100 ms more per 384 px image
        # than TopK over a 10,000-row bank (measured, bench/export.py)
        idx = ranked.topk(self.n_neighbors, dim=1, largest=False).indices
        nearest = self.bank[idx.reshape(-1)].reshape(-1, self.n_neighbors, d)
        exact = (queries.unsqueeze(1) - nearest).square().sum(-1).sqrt()  # [B*M, k]
        return exact.mean(-1).reshape(b, gh, gw)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        work = self.rows @ self.patch_scores(self.features(images)) @ self.cols_t  # [B, H, W]
        scores = work.flatten(1).max(dim=1).values
        if self.coarse is not None:  # FewShotPatchCore._coarse_view
            small = self.shrink_rows @ images @ self.shrink_cols_t
            second = self.coarse_rows @ self.patch_scores(self.features(small)) \
                @ self.coarse_cols_t
            work = (work + torch.minimum(second, scores[:, None, None])) / 2
        return scores, work.unsqueeze(1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared, extracted and aligned as ``FewShotPatchCore._features``."""
        features = _EXTRACT(self.extractor, self.prepare(images))
        return features if self.alignment is None else self.alignment(features)

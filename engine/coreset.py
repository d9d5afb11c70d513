"""Greedy k-center (farthest-point) coreset selection for the PatchCore memory bank.

The memory bank only needs a subset of training patches such that every patch stays close to some
kept patch; greedy k-center bounds that covering radius within a factor of 2 of the optimum.

Why not anomalib's ``KCenterGreedy``: every step it materialises ``features - centre`` (an N x D
temporary) and takes its norm. Here a step is one matrix-vector product against a contiguous
Gaussian (Johnson-Lindenstrauss) projection, using ||x - c||² = ||x||² - 2 x·c + ||c||² with the
norms precomputed, then an in-place minimum and an argmax: it reads N x projection_dim floats once
and allocates nothing. The loop is thousands of tiny ops: with two torch threads every op waits on
an OpenMP/MKL barrier, which costs 2-15x as soon as another process competes for the cores
(measured on the shared 2-core dev box). The thread count is a process-wide setting, so it is not
changed here but once per worker process (``engine.device.configure_worker_process``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from engine.device import pick_device

#: How often the greedy loop calls its progress callback (seconds).
PROGRESS_EVERY_S = 0.5

__all__ = ["CoresetSampler", "GreedyCoresetSampler", "covering_radius"]


class CoresetSampler(Protocol):
    """What the memory bank needs from a sampler: indices of the rows to keep."""

    def run(self, features: Tensor) -> Tensor:
        """Return int64 indices into ``features`` ([N, D]) of the rows to keep."""
        ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when present else CPU; anything else is validated by ``pick_device``."""
    return pick_device(None if device is None else str(device))


class GreedyCoresetSampler:
    """Greedy k-center selection in a random low-dimensional projection of the features.

    Give exactly one of ``ratio`` (fraction of N, at least one row kept) or ``size`` (rows kept).
    ``projection_dim=None`` (or D <= projection_dim) runs the greedy in the original space: exact
    but slower for wide features; a projection trades a few percent of covering radius for speed.
    The first centre is drawn from ``seed``, so a seed fixes the result.
    """

    def __init__(
        self,
        ratio: float | None = None,
        size: int | None = None,
        projection_dim: int | None = 128,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if (ratio is None) == (size is None):
            raise ValueError(f"give exactly one of ratio or size, got ratio={ratio}, size={size}")
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if projection_dim is not None and projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {projection_dim}")
        self.ratio = ratio
        self.size = size
        self.projection_dim = projection_dim
        self.seed = seed
        self.device = device

    def target_size(self, n: int) -> int:
        """Number of rows kept out of ``n`` (never more than ``n``)."""
        m = self.size if self.size is not None else max(1, int(n * self.ratio))
        return min(m, n)

    def run(self, features: Tensor, progress: Callable[[float], None] | None = None) -> Tensor:
        """Indices (int64, CPU, selection order) of the greedy k-center coreset of ``features``.

        ``progress(fraction)`` is called about twice a second inside the greedy loop (minutes
        on large banks), so a job can show it and a Cancel raised there stops the loop.
        """
        if features.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
        n = features.shape[0]
        if n == 0:
            raise ValueError(f"cannot select a coreset from empty features {tuple(features.shape)}")
        m = self.target_size(n)
        if m >= n:
            return torch.arange(n, dtype=torch.long)
        generator = torch.Generator().manual_seed(self.seed)
        start = int(torch.randint(n, (1,), generator=generator))
        device = resolve_device(self.device)
        reduced = self._project(features, generator, device)
        if not bool(torch.isfinite(reduced).all()):
            raise ValueError(f"features {tuple(features.shape)} contain NaN or Inf")
        return _greedy_k_center(reduced, m, start, progress).cpu()

    def _project(
        self, features: Tensor, generator: torch.Generator, device: torch.device
    ) -> Tensor:
        """Contiguous float32 [N, k] on ``device``; projected in chunks, N x D never moves whole."""
        d = features.shape[1]
        if self.projection_dim is None or d <= self.projection_dim:
            return features.to(device=device, dtype=torch.float32).contiguous()
        k = self.projection_dim
        matrix = torch.randn(d, k, generator=generator) / math.sqrt(k)
        matrix = matrix.to(device)
        out = torch.empty(features.shape[0], k, device=device)
        chunk = 65536
        for s in range(0, features.shape[0], chunk):
            block = features[s : s + chunk].to(device=device, dtype=torch.float32)
            torch.mm(block, matrix, out=out[s : s + chunk])
        return out


def _greedy_k_center(points: Tensor, m: int, start: int,
                     progress: Callable[[float], None] | None = None) -> Tensor:
    """Farthest-point traversal of ``points`` [N, k] from row ``start``; returns m indices.

    Indices stay on the device (no host sync per step on CUDA). Chosen rows get -inf as their
    distance, so a row is never picked twice even when the data contain duplicates.
    """
    n = points.shape[0]
    device = points.device
    sq_norms = points.square().sum(1)
    min_sq = torch.full((n,), float("inf"), device=device)
    sq = torch.empty(n, device=device)
    chosen = torch.empty(m, dtype=torch.long, device=device)
    idx = torch.tensor([start], device=device)
    chosen[0:1] = idx
    reported = time.monotonic()
    for step in range(1, m):
        if progress is not None and time.monotonic() - reported >= PROGRESS_EVERY_S:
            reported = time.monotonic()
            progress(step / m)
        centre = points.index_select(0, idx)[0]
        torch.addmv(sq_norms, points, centre, alpha=-2.0, out=sq)  # ||x||² - 2 x·c
        sq += sq_norms.index_select(0, idx)  # + ||c||²
        torch.minimum(min_sq, sq, out=min_sq)
        min_sq.index_fill_(0, idx, float("-inf"))
        idx = torch.argmax(min_sq, dim=0, keepdim=True)
        chosen[step : step + 1] = idx
    return chosen


def covering_radius(features: Tensor, indices: Tensor, chunk: int = 4096) -> float:
    """Largest distance from any row of ``features`` to its nearest selected row (original space).

    Chunked over rows so the temporary is ``chunk x len(indices)`` floats; the worst row's distance
    is then recomputed directly (no ||a||² - 2a·b + ||b||² cancellation) so the value is exact.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [N, D], got shape {tuple(features.shape)}")
    indices = torch.as_tensor(indices, dtype=torch.long, device=features.device).reshape(-1)
    if indices.numel() == 0:
        raise ValueError("indices is empty: the covering radius of no centres is undefined")
    centres = features.index_select(0, indices).float()
    centre_sq = centres.square().sum(1)
    worst_sq, worst_row = -1.0, 0
    for s in range(0, features.shape[0], chunk):
        block = features[s : s + chunk].float()
        sq = torch.addmm(centre_sq, block, centres.T, alpha=-2.0)
        sq += block.square().sum(1, keepdim=True)
        nearest = sq.amin(1)
        value, row = nearest.max(0)
        if float(value) > worst_sq:
            worst_sq, worst_row = float(value), s + int(row)
    worst = features[worst_row].float()
    return float((centres - worst).norm(dim=1).min())

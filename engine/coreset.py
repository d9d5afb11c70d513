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

Why two stages above ``candidate_factor x size`` rows: exact greedy costs rows x size steps of
work, and 200 training images at 384 px give ~460k patches; to a 10k bank that took over 20
minutes (DESIGN §9). A random subsample bounds that but drops exactly the rare patches that set
the covering radius. Instead the rows are cut into contiguous chunks (rows are in image order,
so a chunk is a few images and every image keeps its share), a greedy pass inside each chunk
keeps its farthest-spread ``candidate_factor x size x share`` rows, and the final greedy pass
runs on that union only: a composable k-center coreset (Malkomes et al., 2015). Work is
``candidates x (chunk_rows + size)`` instead of ``rows x size``, a chunk stays in cache, and the
covering radius over ALL rows is measured against the exact greedy by ``bench/coreset.py``.
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
#: Above this many candidate rows per kept row, candidates come from per-chunk greedy passes.
#: Measured on 100k patch vectors of generated 1024-px parts kept to 2k (bench/coreset.py
#: settings): exact 67 s; factor 3 with 4k chunks 4.8 s, covering radius +1.4 %, mean distance
#: -1 %; factor 2: radius +4.9 %; factor 1.5: +24 %; factor 4 with 16k chunks: +0.1 %, 13 s.
CANDIDATE_FACTOR = 3.0
#: Rows per chunk of the first stage: 4k x 128 floats (2 MB) stay in a CPU core's L2 cache.
CHUNK_ROWS = 4_096

__all__ = ["CoresetSampler", "GreedyCoresetSampler", "coverage", "covering_radius"]


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
    The first centre is drawn from ``seed``, so a seed fixes the result. ``candidate_factor``
    bounds the final greedy pass to that many candidates per kept row (two stages, see the module
    docstring); ``None`` always runs the exact single pass (benchmarks, small banks).
    """

    def __init__(
        self,
        ratio: float | None = None,
        size: int | None = None,
        projection_dim: int | None = 128,
        seed: int = 0,
        device: str | torch.device | None = None,
        candidate_factor: float | None = CANDIDATE_FACTOR,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        if (ratio is None) == (size is None):
            raise ValueError(f"give exactly one of ratio or size, got ratio={ratio}, size={size}")
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if projection_dim is not None and projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {projection_dim}")
        if candidate_factor is not None and candidate_factor < 1.0:
            raise ValueError(f"candidate_factor must be >= 1 or None, got {candidate_factor}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.candidate_factor = candidate_factor
        self.chunk_rows = chunk_rows
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
        """Indices (int64, CPU) of the greedy k-center coreset of ``features``.

        ``progress(fraction)`` is called about twice a second from inside the greedy loops
        (fractions rise steadily over both stages), so a job can show it and a Cancel raised
        there stops the work within a second.
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
        ticker = _Ticker(progress)
        reduced = self._project(features, generator, device, ticker.part(0.0, 0.0))
        # column sums carry any NaN/Inf and read the rows once; an elementwise isfinite builds
        # an N x k mask (measured 5.6 s, the longest silence of a 200-image training)
        if not bool(torch.isfinite(reduced.sum(dim=0)).all()):
            raise ValueError(f"features {tuple(features.shape)} contain NaN or Inf")
        budget = n if self.candidate_factor is None else math.ceil(self.candidate_factor * m)
        if n <= budget:
            return _greedy_k_center(reduced, m, start, ticker).cpu()
        # Work of each stage (rows read per step x steps), so the fraction moves evenly.
        first = budget * min(self.chunk_rows, n)
        share = first / (first + budget * m)
        candidates = _chunk_candidates(reduced, budget, self.chunk_rows, generator,
                                       ticker.part(0.0, share))
        start = int(torch.randint(len(candidates), (1,), generator=generator))
        chosen = _greedy_k_center(reduced.index_select(0, candidates), m, start,
                                  ticker.part(share, 1.0))
        return candidates.index_select(0, chosen).cpu()

    def _project(
        self, features: Tensor, generator: torch.Generator, device: torch.device,
        tick: Callable[[float], None] | None = None,
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
            if tick is not None:  # ~0.2 s a chunk; half a million rows take a few seconds
                tick(0.0)
        return out


class _Ticker:
    """Calls ``progress(fraction)`` at most every PROGRESS_EVERY_S across many greedy loops.

    A loop reports its own fraction; ``part(lo, hi)`` maps it into the overall range, and the
    clock is shared, so short chunks that each end within half a second still report.
    """

    def __init__(self, progress: Callable[[float], None] | None, lo: float = 0.0,
                 hi: float = 1.0, clock: list[float] | None = None) -> None:
        self.progress, self.lo, self.hi = progress, lo, hi
        self.clock = clock if clock is not None else [time.monotonic()]

    def part(self, lo: float, hi: float) -> _Ticker:
        span = self.hi - self.lo
        return _Ticker(self.progress, self.lo + span * lo, self.lo + span * hi, self.clock)

    def __call__(self, fraction: float) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self.clock[0] >= PROGRESS_EVERY_S:
            self.clock[0] = now
            self.progress(self.lo + (self.hi - self.lo) * fraction)


def _chunk_candidates(points: Tensor, budget: int, chunk_rows: int,
                      generator: torch.Generator, tick: _Ticker) -> Tensor:
    """About ``budget`` row indices: a greedy k-center pass inside each contiguous chunk.

    Chunk i of n_i rows keeps ``ceil(budget * n_i / N)`` rows, so every image keeps coverage in
    proportion to its patches, and each chunk's own farthest patches survive to the final pass.
    """
    n = points.shape[0]
    n_chunks = math.ceil(n / chunk_rows)
    bounds = [round(i * n / n_chunks) for i in range(n_chunks + 1)]
    out: list[Tensor] = []
    done = 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        keep = min(hi - lo, math.ceil(budget * (hi - lo) / n))
        start = int(torch.randint(hi - lo, (1,), generator=generator))
        part = tick.part(done / n, hi / n)
        out.append(_greedy_k_center(points[lo:hi], keep, start, part) + lo)
        done = hi
    return torch.cat(out)


def _greedy_k_center(points: Tensor, m: int, start: int, tick: _Ticker | None = None) -> Tensor:
    """Farthest-point traversal of ``points`` [N, k] from row ``start``; returns m indices.

    Indices stay on the device (no host sync per step on CUDA). Chosen rows get -inf as their
    distance, so a row is never picked twice even when the data contain duplicates. ``tick``
    gets this loop's fraction every step (it throttles itself; raising there stops the loop).
    """
    n = points.shape[0]
    device = points.device
    sq_norms = points.square().sum(1)
    min_sq = torch.full((n,), float("inf"), device=device)
    sq = torch.empty(n, device=device)
    chosen = torch.empty(m, dtype=torch.long, device=device)
    idx = torch.tensor([start], device=device)
    chosen[0:1] = idx
    for step in range(1, m):
        if tick is not None:
            tick(step / m)
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


def coverage(features: Tensor, indices: Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(max, mean) over ALL rows of the distance to the nearest selected row (original space).

    The max is :func:`covering_radius` (exact); the mean is what scoring feels on typical good
    patches, the max what the rarest good patch gets. Benchmarks compare samplers with both.
    """
    indices = torch.as_tensor(indices, dtype=torch.long, device=features.device).reshape(-1)
    centres = features.index_select(0, indices).float()
    centre_sq = centres.square().sum(1)
    total = 0.0
    for s in range(0, features.shape[0], chunk):
        block = features[s : s + chunk].float()
        sq = torch.addmm(centre_sq, block, centres.T, alpha=-2.0)
        sq += block.square().sum(1, keepdim=True)
        total += float(sq.amin(1).clamp_min(0).sqrt().double().sum())
    return covering_radius(features, indices, chunk), total / features.shape[0]

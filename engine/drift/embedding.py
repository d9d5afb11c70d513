"""Embedding drift: do the lot's patch features come from the same distribution as the
features of the images the bank was built from?

Maximum mean discrepancy (MMD) with a Gaussian RBF kernel whose bandwidth is the median
pairwise distance of the pooled sample (the median heuristic), and a permutation p-value.
Written here in numpy (about 60 lines) instead of alibi-detect's ``MMDDrift`` because
alibi-detect pulls TensorFlow or a second torch stack plus numba and friends for one kernel
two-sample test, and because its permutation test shuffles single vectors, which is wrong
for patches:

**Permutation unit = the image.** The patches of one image share its lighting, pose and
texture phase, so they are not independent draws. Shuffling single patches treats 2,000
patches of 4 images as 2,000 independent observations and calls two sets of perfectly good
images "different" almost every time. When ``groups`` are given, whole images are shuffled
between the two sides; the p-value then answers "could these images have come from the
reference images' population?". The smallest possible p-value is 1 / (number of distinct
splits), so very few images cannot reach significance: ``min_p`` says so.

Cost is bounded: at most ``max_samples`` vectors per side (random, seeded), one kernel matrix
of at most (2 * max_samples)^2 floats, and every permutation is one column of a single
matrix product, since MMD^2 (biased) = (w_x - w_y)^T K (w_x - w_y) for the weight vectors
of the two sides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

N_PERMUTATIONS = 200
MAX_SAMPLES = 2000
ALPHA = 0.05


@dataclass(frozen=True)
class MMDResult:
    """MMD^2 (biased estimate), its permutation p-value and what it was computed on."""

    mmd2: float
    p_value: float
    min_p: float
    bandwidth: float
    n_x: int
    n_y: int
    units_x: int
    units_y: int
    n_permutations: int
    unit: str  # "image" (grouped permutations) or "vector"

    @property
    def drift(self) -> bool:
        return self.p_value < ALPHA

    @property
    def testable(self) -> bool:
        """Whether any outcome could reach p < ALPHA with this many units."""
        return self.min_p < ALPHA

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _subsample(x: np.ndarray, groups: np.ndarray, limit: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    if x.shape[0] <= limit:
        return x, groups
    keep = np.sort(rng.choice(x.shape[0], size=limit, replace=False))
    return x[keep], groups[keep]


def _sq_dists(a: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", a, a)
    d2 = norms[:, None] + norms[None, :] - 2.0 * (a @ a.T)
    return np.maximum(d2, 0.0)


def mmd_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    groups_x: Sequence[int] | np.ndarray | None = None,
    groups_y: Sequence[int] | np.ndarray | None = None,
    *,
    n_permutations: int = N_PERMUTATIONS,
    max_samples: int = MAX_SAMPLES,
    seed: int = 0,
) -> MMDResult:
    """Two-sample MMD test of ``x`` (reference, [n, d]) against ``y`` (current, [m, d]).

    ``groups_x`` / ``groups_y`` (one label per row, e.g. the image index) make the image the
    permutation unit; without them single rows are shuffled (right for i.i.d. vectors).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"MMD needs two [n, d] arrays of equal d, got {x.shape} and {y.shape}")
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError("MMD needs at least one vector per side")
    grouped = groups_x is not None and groups_y is not None
    gx = np.asarray(groups_x) if grouped else np.arange(x.shape[0])
    gy = np.asarray(groups_y) if grouped else np.arange(y.shape[0])
    rng = np.random.default_rng(seed)
    x, gx = _subsample(x, gx, max_samples, rng)
    y, gy = _subsample(y, gy, max_samples, rng)
    # one unit id space over both sides: unit u holds the rows with ``unit_of_row == u``
    _, ux = np.unique(gx, return_inverse=True)
    _, uy = np.unique(gy, return_inverse=True)
    n_ux, n_uy = int(ux.max()) + 1, int(uy.max()) + 1
    unit_of_row = np.concatenate([ux, uy + n_ux])
    n_units = n_ux + n_uy

    pooled = np.concatenate([x, y])
    d2 = _sq_dists(pooled)
    off_diag = d2[np.triu_indices(pooled.shape[0], k=1)]
    if off_diag.size > 200_000:
        off_diag = rng.choice(off_diag, 200_000, replace=False)
    median = float(np.sqrt(np.median(off_diag))) if off_diag.size else 0.0
    bandwidth = median if median > 0 else 1.0
    kernel = np.exp(-d2 / (2.0 * bandwidth**2))
    del d2

    def weights(assign: np.ndarray) -> np.ndarray:
        """assign [n_units, P] bool (True = side x) -> w_x - w_y per row, [n_rows, P]."""
        in_x = assign[unit_of_row]  # [n_rows, P]
        nx = in_x.sum(axis=0, keepdims=True)
        ny = in_x.shape[0] - nx
        return in_x / np.maximum(nx, 1) - (~in_x) / np.maximum(ny, 1)

    observed = np.zeros((n_units, 1), dtype=bool)
    observed[:n_ux] = True
    perms = np.zeros((n_units, n_permutations), dtype=bool)
    for p in range(n_permutations):
        perms[rng.permutation(n_units)[:n_ux], p] = True
    assign = np.concatenate([observed, perms], axis=1)
    w = weights(assign)
    stats = np.einsum("ip,ip->p", w, kernel @ w)
    mmd2 = float(stats[0])
    exceed = int(np.sum(stats[1:] >= mmd2 - 1e-12))
    p_value = (1 + exceed) / (1 + n_permutations)
    splits = math.comb(n_units, n_ux)
    min_p = max(1.0 / splits, 1.0 / (1 + n_permutations))
    return MMDResult(mmd2, float(p_value), float(min_p), bandwidth, int(x.shape[0]),
                     int(y.shape[0]), n_ux, n_uy, n_permutations,
                     "image" if grouped else "vector")


def model_patch_features(model: Any, images: Sequence[np.ndarray]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Patch features the model itself sees, one block per image: (vectors [N, D], image
    index per row). The plain view only (no flips), at the model's working size.

    Needs a model with ``embed(tensors, views)`` and ``working_tensor(image)`` (Kensa's
    few-shot PatchCore); any other raises TypeError, and the caller reports embedding drift
    as not computed rather than guessing at a model's internals.
    """
    embed = getattr(model, "embed", None)
    working_tensor = getattr(model, "working_tensor", None)
    if embed is None or working_tensor is None:
        raise TypeError("this model does not expose its patch features")
    import torch

    with torch.no_grad():
        tensors = [working_tensor(image) for image in images]
        vectors, provenance = embed(tensors, [(0, False)])
    return (vectors.float().cpu().numpy().astype(np.float32),
            provenance[:, 0].cpu().numpy().astype(np.int64))

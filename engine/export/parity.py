"""Does an exported file give the app's verdicts? Compared on normalized scores.

Raw scores have no fixed scale (a distance in feature space), so a tolerance on them means
nothing to a user; the normalized score (0.5 at the threshold, the median good score at 0,
``engine.thresholds.normalize``) is what pages, lots and verdicts use. An export whose
normalized scores differ from the app's by more than :data:`TOLERANCE` on any image is refused.

The normalization is passed in as a function, so the service can hand over exactly the rule
it scores with (``ThresholdInfo.normalized``, including its fallback) without the engine
knowing about services; :func:`threshold_normalizer` is the plain engine rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from engine.thresholds import normalize

#: largest accepted |normalized exported - normalized app| on any validation image
TOLERANCE = 1e-3

Normalizer = Callable[[np.ndarray], np.ndarray]


class ParityError(ValueError):
    """An exported model's scores differ from the app's by more than the tolerance."""


def threshold_normalizer(threshold: float, normal_scores: ArrayLike) -> Normalizer:
    """``engine.thresholds.normalize`` bound to one threshold and its good scores."""
    normal = np.asarray(normal_scores, dtype=np.float64)
    normalize(np.zeros(1), threshold, normal)  # refuse a bad rule now, not on the first image
    return lambda raw: normalize(np.asarray(raw, dtype=np.float64), threshold, normal)


@dataclass(frozen=True)
class ParityReport:
    """Per-image normalized differences; ``worst`` indexes the largest."""

    names: tuple[str, ...]
    app: np.ndarray
    exported: np.ndarray
    diffs: np.ndarray
    tolerance: float = TOLERANCE

    @property
    def max_abs_diff(self) -> float:
        return float(self.diffs.max()) if self.diffs.size else 0.0

    @property
    def worst(self) -> int:
        return int(np.argmax(self.diffs))

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def message(self, what: str = "the export") -> str:
        """One line naming the worst image and its difference (the refusal's text)."""
        if not self.diffs.size:
            return f"{what}: no image to compare"
        i = self.worst
        verb = "matches" if self.ok else "differs from"
        return (f"{what} {verb} the app on {len(self.diffs)} validation image(s): the largest "
                f"normalized score difference is {self.diffs[i]:.2e} on {self.names[i]} "
                f"(app {self.app[i]:.4f}, exported {self.exported[i]:.4f}; "
                f"tolerance {self.tolerance:.0e})")


def compare(names: Sequence[str], app_raw: ArrayLike, exported_raw: ArrayLike,
            normalizer: Normalizer, tolerance: float = TOLERANCE) -> ParityReport:
    """Normalize both sets of raw scores and take |difference| per image."""
    app = np.asarray(app_raw, dtype=np.float64).reshape(-1)
    exported = np.asarray(exported_raw, dtype=np.float64).reshape(-1)
    if not len(names) == app.size == exported.size:
        raise ValueError(f"{len(names)} names, {app.size} app scores and {exported.size} "
                         "exported scores: one of each per image is needed")
    if not np.isfinite(exported).all():
        bad = [n for n, v in zip(names, exported, strict=True) if not np.isfinite(v)]
        raise ParityError(f"the export gives no finite score for {bad[0]} "
                          f"({len(bad)} image(s) in all)")
    a = np.asarray(normalizer(app), dtype=np.float64)
    e = np.asarray(normalizer(exported), dtype=np.float64)
    return ParityReport(tuple(names), a, e, np.abs(e - a), tolerance)


def require_parity(report: ParityReport, what: str = "the export") -> ParityReport:
    """``report`` if within tolerance, else :class:`ParityError` with its message."""
    if not report.ok:
        raise ParityError(report.message(what) + "; it is refused")
    return report

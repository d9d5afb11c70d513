"""The one interface every detector in Kensa offers, so services never care which model runs.

A model is fitted on good images only and scores any image: one scalar per image (higher is more
anomalous) and one anomaly map per image at the image's own size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

#: ``progress(stage, fraction)``: stage is a short human label, fraction in [0, 1].
ProgressFn = Callable[[str, float], None]


class ScoreResult(NamedTuple):
    """Scores of a batch: ``scores[i]`` and ``maps[i]`` (H_i x W_i float32) belong to image i."""

    scores: np.ndarray
    maps: list[np.ndarray]


class FitReport(NamedTuple):
    """What a fit produced, for logs and the database."""

    n_images: int
    n_patches: int
    bank_size: int
    fit_seconds: float


class AnomalyModel(Protocol):
    """``fit`` on good RGB uint8 images (H x W x 3), then ``score`` any images."""

    name: str

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        ...

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        ...

    def save(self, directory: Path) -> dict[str, str]:
        """Write the model's artifacts atomically; returns ``{file name: sha256}``."""
        ...

"""Detectors behind one interface (:mod:`engine.models.base`) and a factory by name."""

from __future__ import annotations

from typing import Any

from engine.models.base import AnomalyModel, FitReport, ScoreResult

ALGORITHMS = ("kensa_patchcore", "anomalib_patchcore")

__all__ = ["ALGORITHMS", "AnomalyModel", "FitReport", "ScoreResult", "build_model"]


def build_model(algorithm: str = "kensa_patchcore", device: str | None = None,
                **params: Any) -> AnomalyModel:
    """A fresh, unfitted model; ``params`` are the algorithm's own settings."""
    if algorithm == "kensa_patchcore":
        from engine.models.fewshot import FewShotConfig, FewShotPatchCore

        return FewShotPatchCore(FewShotConfig(**params), device=device)
    if algorithm == "anomalib_patchcore":
        from engine.models.anomalib_patchcore import AnomalibPatchCore

        return AnomalibPatchCore(device=device, **params)
    raise ValueError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")

"""Detectors behind one contract (:mod:`engine.models.base`), reached by name through
:mod:`engine.models.registry`."""

from __future__ import annotations

from engine.models.base import (
    AnomalyModel,
    Capability,
    FitReport,
    ImageSource,
    ModelStateError,
    PatchEvidence,
    ProgressFn,
    ProvenanceRecord,
    ScoreResult,
    StateIntegrityError,
    verify_files,
)

__all__ = [
    "AnomalyModel",
    "Capability",
    "FitReport",
    "ImageSource",
    "ModelStateError",
    "PatchEvidence",
    "ProgressFn",
    "ProvenanceRecord",
    "ScoreResult",
    "StateIntegrityError",
    "verify_files",
]

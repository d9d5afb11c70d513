"""Drift of production lots against a model's reference: statistics on per-image numbers
(``univariate``), control charts over lots (``charts``), image-quality signals
(``quality``) and embedding drift (``embedding``). Arrays in, numbers out: no database."""

from engine.drift.charts import (
    Limits,
    bootstrap_limits,
    cusum,
    ewma,
    reject_rate_limits,
    western_electric,
)
from engine.drift.embedding import MMDResult, mmd_permutation_test, model_patch_features
from engine.drift.quality import SIGNALS, Quality, image_quality
from engine.drift.univariate import UnivariateDrift, compare, ks, psi, wasserstein

__all__ = [
    "SIGNALS", "Limits", "MMDResult", "Quality", "UnivariateDrift", "bootstrap_limits",
    "compare", "cusum", "ewma", "image_quality", "ks", "mmd_permutation_test",
    "model_patch_features", "psi", "reject_rate_limits", "wasserstein", "western_electric",
]

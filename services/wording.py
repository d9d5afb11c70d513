"""Plain words for what the pages show: per-project model numbers and a glossary.

Database ids are global (the bottle project's first model was "v2" because another project had
trained before it), and terms such as "memory bank", "coreset" or "f1_optimal" mean nothing to
a quality engineer. Every page names models and methods through this module, so the wording is
the same everywhere and ids stay in the details.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ModelVersion

#: How a threshold was chosen, in words (``thresholds.method`` values).
METHOD_WORDS: dict[str, str] = {
    "f1_optimal": "best balance of misses and false alarms on held-out images",
    "f1_margin": "midway between the good and defect scores of held-out images",
    "mean_k_sigma": "well above the scores of held-out good images (no defects to learn from)",
    "synthetic_f1": "midway between held-out good images and synthetic defects painted into "
                    "them (no real defects held out)",
    "percentile": "a percentile of the held-out good images' scores",
    "manual": "set by hand",
    "calibration": "the threshold the model was trained with",
}

#: Terms that must stay on the pages, each in one plain sentence (the Evaluation glossary).
GLOSSARY: dict[str, str] = {
    "AUROC": "how well the scores put defects above good parts: 1.0 always, 0.5 is guessing.",
    "AP (average precision)": "how clean the top of the ranking is: 1.0 means every part "
                              "flagged first is really defective.",
    "F1": "one number for the balance between missed defects and false alarms (1.0 = none).",
    "Pixel AUROC": "like AUROC, but per pixel: does the heatmap light up on the marked defect "
                   "pixels rather than elsewhere (needs masks).",
    "AUPRO": "how well the marked defect regions are covered by the heatmap while few good "
             "pixels light up (needs masks).",
    "Bank": "the good-part patches the model compares every new image against; an update adds "
            "new good images to it.",
    "Coreset": "the representative subset of good patches kept in the bank, so inspection "
               "stays fast.",
    "Held-out images": "images the model did not learn from; every score on this page comes "
                       "from them.",
    "Threshold": "the anomaly score at which a part is called defective.",
}


def count(n: int, noun: str) -> str:
    """``count(1, "image")`` -> "1 image", ``count(3, "image")`` -> "3 images"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def model_numbers(session: Session, project_id: int) -> dict[int, int]:
    """Model version id -> its number within the project (1, 2, 3… in creation order).

    Computed, not stored: the ids already give the order, so no column and no migration. Every
    run counts (a failed or cancelled one too), so a number never changes once shown.
    """
    ids = session.scalars(select(ModelVersion.id).where(ModelVersion.project_id == project_id)
                          .order_by(ModelVersion.id))
    return {mv_id: number for number, mv_id in enumerate(ids, start=1)}


def model_name(number: int | None) -> str:
    """"Model 2" (or "Model ?" for a run that is not in the project any more)."""
    return f"Model {number}" if number is not None else "Model ?"


def bank_name(version: int) -> str:
    """A bank version in words: the bank training made, or the n-th change after it."""
    return "as trained" if version <= 1 else f"update {version - 1}"


def model_and_bank(number: int | None, version: int | None) -> str:
    """"Model 2" for the bank training made, "Model 2 · update 1" after a bank update."""
    if version is None or version <= 1:
        return model_name(number)
    return f"{model_name(number)} · {bank_name(version)}"


def method_words(method: str | None) -> str:
    """A threshold method in words (an unknown one is shown as stored)."""
    if not method:
        return "none"
    return METHOD_WORDS.get(method, method.replace("_", " "))

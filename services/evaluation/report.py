"""Evaluation data for one model version, from what training stored (no model is loaded).

A finished training run leaves a batch ``validation-m<id>`` with one prediction per held-out
image. Joined to the images table by sha256 it gives (score, true label) pairs, from which the
Evaluation page's curves, confusion matrix, worst mistakes and review band are computed with
``engine.metrics`` / ``engine.thresholds``. Moving the threshold slider therefore costs
milliseconds: nothing is re-scored.

Scores are raw anomaly scores (higher = more anomalous); a score at or above the threshold is
a defect, the project-wide convention of ``engine.thresholds``.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import db.repositories as repo
from db.models import RunStatus
from engine.artifacts import write_bytes_atomic
from engine.data import ImageLoadError, load_image
from engine.imaging import shrink_to_fit
from engine.metrics import confusion_at, curves
from engine.thresholds import ReviewBand
from services.context import Kensa
from services.data.gallery import pad_square
from services.data.projects import active_model_version, require_project
from services.history.versions import set_threshold
from services.inference.batches import validation_batch_name

#: (key in model_versions.metrics, label, what it means) in the order the page lists them.
METRICS = (
    ("image_auroc", "Image AUROC",
     "How well scores rank defects above good images: 1.0 perfect, 0.5 guessing."),
    ("image_ap", "Image AP",
     "Average precision: how clean the top of the ranking is (1.0 = every flagged part is bad)."),
    ("image_f1", "Image F1",
     "Balance of missed defects and false alarms at the best single threshold."),
    ("pixel_auroc", "Pixel AUROC",
     "How well the heatmap separates defect pixels from good ones (needs masks)."),
    ("aupro", "AUPRO",
     "How much of each defect region the heatmap covers at few false alarms (needs masks)."),
)


@dataclass(frozen=True)
class EvalImage:
    """One held-out image with its stored score (label 1 = defect)."""

    name: str
    path: str
    sha256: str
    label: int
    defect_type: str | None
    score: float
    heatmap_path: str | None


@dataclass
class Evaluation:
    """Everything the page draws for one model version, read once."""

    project: str
    model_version_id: int
    is_active: bool
    metrics: list[dict[str, Any]]  # rows of the metrics table, values formatted ("—" = none)
    images: list[EvalImage]
    scores: np.ndarray
    labels: np.ndarray
    threshold: float | None
    threshold_method: str | None
    unmatched: int = 0
    backbone: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_good(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def n_defect(self) -> int:
        return int((self.labels == 1).sum())

    @property
    def has_both(self) -> bool:
        return self.n_good > 0 and self.n_defect > 0

    def slider_scale(self) -> tuple[float, float, float]:
        """(low, high, step) for a threshold slider: every score and the threshold inside.

        The step is round (1, 2 or 5 times a power of ten, about 1000 steps) and the bounds
        are multiples of it, because the browser rounds a moved slider to the step's decimals:
        on any other grid the value shown while sliding would differ from the value saved.
        """
        values = list(self.scores) + ([self.threshold] if self.threshold is not None else [])
        lo, hi = float(min(values)), float(max(values))
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        raw = span / 1000
        power = 10 ** math.floor(math.log10(raw))
        step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
        decimals = max(0, -math.floor(math.log10(step)))
        low = round(math.floor((lo - 0.02 * span) / step) * step, decimals)
        high = round(math.ceil((hi + 0.02 * span) / step) * step, decimals)
        return low, high, step


class NothingToEvaluate(LookupError):
    """No finished model version (or its validation scores are gone); the message says why."""


def evaluable_versions(ctx: Kensa, name: str) -> list[dict[str, Any]]:
    """Finished model versions, newest first, with what a picker shows."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        active = active_model_version(s, project.id)
        return [
            {
                "id": mv.id,
                "active": active is not None and mv.id == active.id,
                "label": f"v{mv.id} · {mv.backbone or mv.algorithm}"
                + (f" · AUROC {mv.metrics['image_auroc']:.3f}"
                   if isinstance(mv.metrics.get("image_auroc"), int | float) else "")
                + (" · in use" if active is not None and mv.id == active.id else ""),
            }
            for mv in repo.list_model_versions(s, project.id, status=RunStatus.DONE.value)
        ]


def load_evaluation(ctx: Kensa, name: str, model_version_id: int) -> Evaluation:
    """Scores and true labels of the model version's held-out images, plus its threshold."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        mv = repo.get_model_version(s, model_version_id)
        if mv is None or mv.project_id != project.id or mv.status != RunStatus.DONE.value:
            raise NothingToEvaluate(f"model v{model_version_id} is not a finished training of "
                                    f"{name!r}")
        active = active_model_version(s, project.id)
        batch = repo.get_batch_by_name(s, project.id, validation_batch_name(mv.id))
        if batch is None:
            raise NothingToEvaluate(f"model v{mv.id} has no stored validation scores")
        predictions = repo.list_predictions(s, batch.id)
        images = {img.sha256: img for img in repo.list_images(s, project.id)}
        threshold = repo.get_active_threshold_for_model(s, mv.id)
        metrics = dict(mv.metrics or {})
        backbone = mv.backbone
    rows: list[EvalImage] = []
    unmatched = 0
    for p in predictions:
        img = images.get(p.image_sha256)
        if img is None:  # image removed from the project since: its true label is unknown
            unmatched += 1
            continue
        path = str(ctx.resolve(img.path))
        rows.append(EvalImage(
            Path(path).name, path, img.sha256, int(img.label == "defect"), img.defect_type,
            float(p.raw_score), str(ctx.resolve(p.heatmap_path)) if p.heatmap_path else None,
        ))
    table = []
    for key, label, meaning in METRICS:
        value = metrics.get(key)
        table.append({"metric": label,
                      "value": f"{value:.3f}" if isinstance(value, int | float) else "—",
                      "meaning": meaning})
    notes = []
    if all(r["value"] == "—" for r in table[3:]):
        notes.append("Pixel scores need defect images with masks among the held-out images.")
    return Evaluation(
        project=name,
        model_version_id=model_version_id,
        is_active=active is not None and active.id == model_version_id,
        metrics=table,
        images=rows,
        scores=np.asarray([r.score for r in rows], dtype=np.float64),
        labels=np.asarray([r.label for r in rows], dtype=np.int64),
        threshold=None if threshold is None else float(threshold.raw_value),
        threshold_method=None if threshold is None else threshold.method,
        unmatched=unmatched,
        backbone=backbone,
        notes=notes,
    )


def roc_pr(ev: Evaluation) -> dict[str, dict[str, list[float]]] | None:
    """ROC and PR curves, or None when one class is missing (no curve exists then)."""
    return curves(ev.scores, ev.labels) if ev.has_both else None


def at_threshold(ev: Evaluation, threshold: float) -> dict[str, Any]:
    """Confusion counts and the rates a quality engineer reads, at ``threshold``."""
    counts = confusion_at(ev.scores, ev.labels, threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        **counts,
        "missed_defects": ratio(fn, tp + fn),
        "false_alarms": ratio(fp, fp + tn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "flagged": tp + fp,
    }


def worst_errors(ev: Evaluation, threshold: float, n: int = 4
                 ) -> tuple[list[EvalImage], list[EvalImage]]:
    """False positives with the highest scores and false negatives with the lowest: the
    mistakes furthest on the wrong side of the threshold come first."""
    fps = [r for r in ev.images if r.label == 0 and r.score >= threshold]
    fns = [r for r in ev.images if r.label == 1 and r.score < threshold]
    fps.sort(key=lambda r: r.score, reverse=True)
    fns.sort(key=lambda r: r.score)
    return fps[:n], fns[:n]


def review_band(ev: Evaluation) -> dict[str, Any] | None:
    """Band between the lowest defect score and the highest good score, with counts.

    Below the band no held-out defect was seen (sure good), from its top up no good image
    scored higher (sure defect); in between a person should look. None without both classes.
    """
    if not ev.has_both:
        return None
    band = ReviewBand.from_scores(ev.scores[ev.labels == 0], ev.scores[ev.labels == 1])
    zones = band.classify(ev.scores)
    counts = {}
    for zone in ("good", "review", "defect"):
        in_zone = zones == zone
        counts[zone] = {"images": int(in_zone.sum()),
                        "good": int((in_zone & (ev.labels == 0)).sum()),
                        "defect": int((in_zone & (ev.labels == 1)).sum())}
    overlap = float(ev.scores[ev.labels == 1].min()) <= float(ev.scores[ev.labels == 0].max())
    lowest_defect, highest_good = "the lowest defect score", "the highest good score"
    return {"low": band.low, "high": band.high, "counts": counts, "overlap": overlap,
            # What each edge is, in words: the classes overlap (edges = lowest defect, highest
            # good) or are separated (edges = highest good, lowest defect).
            "low_is": lowest_defect if overlap else highest_good,
            "high_is": highest_good if overlap else lowest_defect}


def threshold_history(ctx: Kensa, name: str, model_version_id: int) -> list[dict[str, Any]]:
    """Every threshold of the model's bank versions, newest first (saved ones included)."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        mv = repo.get_model_version(s, model_version_id)
        if mv is None or mv.project_id != project.id:
            return []
        rows = []
        for bank in repo.list_state_versions(s, mv.id):
            for t in repo.list_thresholds(s, bank.id):
                rows.append({
                    "id": t.id,
                    "bank": f"v{bank.version}",
                    "threshold": float(t.raw_value),
                    "method": t.method,
                    "active": bool(t.active and bank.is_active),
                    "by": t.created_by or "—",
                    "saved": t.created_at,
                })
    rows.sort(key=lambda r: r["id"], reverse=True)
    return rows


# --------------------------------------------------------------------------- heatmaps

HEAT_ALPHA = 0.45


def _overlay(image_path: str, heatmap_path: str, side: int) -> bytes:
    image = load_image(image_path)
    small = shrink_to_fit(image, side)
    size = (small.shape[1], small.shape[0])
    heat = cv2.imread(heatmap_path, cv2.IMREAD_GRAYSCALE)
    if heat is None:
        raise ImageLoadError(f"{heatmap_path}: cannot read the heatmap")
    heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = pad_square(cv2.addWeighted(small, 1 - HEAT_ALPHA, colour, HEAT_ALPHA, 0), side)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:  # pragma: no cover
        raise RuntimeError("could not encode the heatmap overlay")
    return encoded.tobytes()


def heatmap_overlay(home: Path, image_path: str, heatmap_path: str | None,
                    side: int = 256) -> bytes | None:
    """Image with its heatmap blended on top (red = far from anything seen on good parts) on a
    square canvas, cached on disk like the gallery thumbnails; None when a file is unreadable."""
    if heatmap_path is None:
        return None
    stamps = []
    for p in (image_path, heatmap_path):
        try:
            st = os.stat(p)
        except OSError:
            return None
        stamps.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256(("|".join(stamps) + f"|{side}|square").encode()).hexdigest()
    target = Path(home) / "cache" / "heat" / f"{key}.jpg"
    try:
        return target.read_bytes()
    except FileNotFoundError:
        pass
    try:
        data = _overlay(image_path, heatmap_path, side)
    except (ImageLoadError, OSError, cv2.error):
        return None
    write_bytes_atomic(target, data)
    return data


def save_threshold(ctx: Kensa, name: str, model_version_id: int, value: float,
                   created_by: str = "workbench") -> dict[str, Any]:
    """Make ``value`` the threshold in use (a new row; the old one stays as history).

    Only the model in use can get a new threshold: ``set_threshold`` acts on the project's
    active bank, and saving a value measured on another model would silently apply it there.
    """
    with ctx.session(readonly=True) as s:
        active = active_model_version(s, require_project(s, name).id)
    if active is None or active.id != model_version_id:
        raise ValueError(f"model v{model_version_id} is not the model in use; only the newest "
                         "finished model's threshold can be changed")
    return set_threshold(ctx, name, float(value), method="manual", created_by=created_by)

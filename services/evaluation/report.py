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
from engine.thresholds import ReviewBand, f1_optimal_with_margin
from services.context import Kensa
from services.data.gallery import pad_square
from services.data.projects import active_model_version, require_project
from services.history.versions import set_threshold
from services.inference.batches import validation_batch_name
from services.wording import bank_name, method_words, model_name, model_numbers

#: (key in model_versions.metrics, label in words (the usual name), what it means) in the
#: order the page lists them. The usual names stay in brackets so a reader can look them up.
METRICS = (
    ("image_auroc", "Separates good from defect (image AUROC)",
     "How well scores rank defects above good images: 1.0 perfect, 0.5 guessing."),
    ("image_ap", "Clean top of the ranking (AP)",
     "Average precision: how clean the top of the ranking is (1.0 = every flagged part is bad)."),
    ("image_f1", "Balance of misses and false alarms (F1)",
     "At the best single threshold, measured on the images that chose it (optimistic)."),
    ("pixel_auroc", "Heatmap on defect pixels (pixel AUROC)",
     "How well the heatmap separates defect pixels from good ones (needs masks)."),
    ("aupro", "Defect regions covered (AUPRO)",
     "How much of each defect region the heatmap covers at few false alarms (needs masks)."),
)
#: Below these, the page warns that the numbers rest on few images.
FEW_IMAGES, FEW_PER_CLASS = 20, 5


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
    label: str = ""  # "Model 2": numbered within the project
    #: The threshold the stored heatmaps were drawn against (their 0.5); None: not known.
    heat_anchor: float | None = None

    @property
    def n_good(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def n_defect(self) -> int:
        return int((self.labels == 1).sum())

    @property
    def n_synthetic(self) -> int:
        """Defect rows that are synthetic defects painted at training (no real ones held out)."""
        return sum(1 for r in self.images if (r.defect_type or "").startswith("synthetic"))

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
        numbers = model_numbers(s, project.id)
        return [
            {
                "id": mv.id,
                "active": active is not None and mv.id == active.id,
                "label": model_name(numbers.get(mv.id))
                + (f" · separates good from defect {mv.metrics['image_auroc']:.3f} (AUROC"
                   + (", synthetic defects)" if mv.metrics.get("metrics_on") == "synthetic"
                      else ")")
                   if isinstance(mv.metrics.get("image_auroc"), int | float) else "")
                + (" · in use" if active is not None and mv.id == active.id else ""),
            }
            for mv in repo.list_model_versions(s, project.id, status=RunStatus.DONE.value)
        ]


def synthetic_defects(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """sha256 -> record of the synthetic defects a run without held-out defects painted
    (``metrics["synthetic_validation"]``, written by training); empty for other runs."""
    listed = metrics.get("synthetic_validation")
    if not isinstance(listed, list):
        return {}
    return {e["sha256"]: e for e in listed if isinstance(e, dict) and "sha256" in e}


def _synthetic_row(ctx: Kensa, painted: dict[str, Any], p: Any) -> EvalImage:
    """A synthetic defect as a defect row (worst-case gallery included), named as such."""
    path = str(ctx.resolve(painted["path"]))
    kind = painted.get("kind", "defect")
    source = Path(str(painted.get("source", path))).name
    # the name is the good image it was painted into; the type says "synthetic (kind)" (every
    # caption shows both, so the word once is enough)
    return EvalImage(source, path, p.image_sha256, 1, f"synthetic ({kind})",
                     float(p.raw_score),
                     str(ctx.resolve(p.heatmap_path)) if p.heatmap_path else None)


def load_evaluation(ctx: Kensa, name: str, model_version_id: int) -> Evaluation:
    """Scores and true labels of the model version's held-out images, plus its threshold."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        mv = repo.get_model_version(s, model_version_id)
        if mv is None or mv.project_id != project.id or mv.status != RunStatus.DONE.value:
            raise NothingToEvaluate(f"model id {model_version_id} is not a finished training "
                                    f"of {name!r}")
        label = model_name(model_numbers(s, project.id).get(mv.id))
        active = active_model_version(s, project.id)
        batch = repo.get_batch_by_name(s, project.id, validation_batch_name(mv.id))
        if batch is None:
            raise NothingToEvaluate(f"{label} has no stored validation scores")
        predictions = repo.list_predictions(s, batch.id)
        images = {img.sha256: img for img in repo.list_images(s, project.id)}
        threshold = repo.get_active_threshold_for_model(s, mv.id)
        # the stored heatmaps are normalised on the calibration threshold (0.5 = it), the
        # same rule batches.rules_of applies when it writes them
        anchor = None if threshold is None else float(
            (threshold.params or {}).get("calibration", threshold.raw_value))
        metrics = dict(mv.metrics or {})
        backbone = mv.backbone
    rows: list[EvalImage] = []
    unmatched = 0
    synthetic = synthetic_defects(metrics)
    for p in predictions:
        painted = synthetic.get(p.image_sha256)
        if painted is not None:  # a synthetic defect the threshold was set on (no real ones)
            rows.append(_synthetic_row(ctx, painted, p))
            continue
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
    if synthetic:
        notes.append(f"No defect images were held out: the threshold was set on "
                     f"{len(synthetic)} synthetic defects painted into held-out good images, "
                     "and the numbers below measure those, not real defects.")
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
        label=label,
        heat_anchor=anchor,
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
    """Three zones from the held-out scores, with their counts and a caption made from them.

    Separated classes: up to and including the highest good score is sure good, from the
    lowest defect score up sure defect, the unseen gap between them is the review zone (no
    evaluated image in it). Overlapping classes: below the lowest defect score sure good, above
    the highest good score sure defect, the overlap (both ends included) is reviewed. The edges
    are included on the side their image belongs to, so the highest good image is never
    counted in "review" while the caption says the scores do not overlap.
    None without both classes.
    """
    if not ev.has_both:
        return None
    highest_good = float(ev.scores[ev.labels == 0].max())
    lowest_defect = float(ev.scores[ev.labels == 1].min())
    overlap = lowest_defect <= highest_good
    # ReviewBand: good below ``low``, defect from ``high`` up; nextafter moves an edge score to
    # the side it belongs to (the highest good is good; in an overlap it is reviewed).
    if overlap:
        band = ReviewBand(lowest_defect, float(np.nextafter(highest_good, np.inf)))
    else:
        band = ReviewBand(float(np.nextafter(highest_good, np.inf)), lowest_defect)
    zones = band.classify(ev.scores)
    counts = {}
    for zone in ("good", "review", "defect"):
        in_zone = zones == zone
        counts[zone] = {"images": int(in_zone.sum()),
                        "good": int((in_zone & (ev.labels == 0)).sum()),
                        "defect": int((in_zone & (ev.labels == 1)).sum())}
    low, high = min(highest_good, lowest_defect), max(highest_good, lowest_defect)
    if overlap:
        rows = [("sure good", f"below {low:.4f} (the lowest defect score)"),
                ("review", f"{low:.4f} to {high:.4f}, both included"),
                ("sure defect", f"above {high:.4f} (the highest good score)")]
    else:
        rows = [("sure good", f"up to {low:.4f} (the highest good score)"),
                ("review", f"between {low:.4f} and {high:.4f}"),
                ("sure defect", f"from {high:.4f} (the lowest defect score) up")]
    review = counts["review"]
    if review["images"] == 0:
        caption = ("No evaluated image falls in the review zone: good and defect scores do not "
                   "overlap, so any threshold between "
                   f"{low:.4f} and {high:.4f} separates all {len(ev.scores)} of them.")
    else:
        caption = (f"{review['images']} evaluated image(s) fall in the review zone "
                   f"({review['good']} good, {review['defect']} defect): good and defect "
                   "scores overlap there, so no single threshold separates them all.")
    return {"low": low, "high": high, "counts": counts, "overlap": overlap,
            "table": [{"zone": zone, "scores": where, **counts[key]}
                      for (zone, where), key in zip(rows, ("good", "review", "defect"),
                                                    strict=True)],
            "caption": caption}


def sample_warning(ev: Evaluation) -> str | None:
    """A warning when the numbers rest on few images, with how much one image moves them.

    AUROC is the share of (good, defect) pairs ranked right: one good image is in ``n_defect``
    of the ``n_good * n_defect`` pairs, so moving it changes AUROC by up to ``1 / n_good``
    (``1 / n_defect`` for a defect image). None when there are enough images of each class.
    """
    n = len(ev.scores)
    if n >= FEW_IMAGES and min(ev.n_good, ev.n_defect) >= FEW_PER_CLASS:
        return None
    text = (f"These numbers rest on only {n} held-out image(s) ({ev.n_good} good, "
            f"{ev.n_defect} defect).")
    if ev.has_both:
        swing = max(1 / ev.n_good, 1 / ev.n_defect)
        text += (f" One image more or less on the wrong side moves the AUROC by up to "
                 f"{swing:.2f} and the accuracy by {1 / n:.0%}.")
    return text + (f" Treat them as a rough guide; at least {FEW_PER_CLASS} good and "
                   f"{FEW_PER_CLASS} defect images the model did not learn from "
                   f"({FEW_IMAGES} in all) give firmer numbers.")


def cross_validated(ev: Evaluation) -> dict[str, Any] | None:
    """How the automatic threshold does on images that did not choose it (leave-one-out).

    The confusion matrix at the chosen threshold is measured on the same images that chose it,
    so it is optimistic: with few images the best threshold fits them exactly. Here each image
    is called at the threshold chosen (F1-optimal, mid-plateau, as training does) on all the
    other images; the calls together give an honest estimate of what to expect on new parts.
    None when a class has fewer than two images (leaving one out would leave none).
    """
    from sklearn.metrics import confusion_matrix, f1_score
    from sklearn.model_selection import LeaveOneOut

    if min(ev.n_good, ev.n_defect) < 2:
        return None
    calls = np.zeros_like(ev.labels)
    for rest, (one,) in LeaveOneOut().split(ev.scores):
        chosen = f1_optimal_with_margin(ev.scores[rest], ev.labels[rest]).value
        calls[one] = int(ev.scores[one] >= chosen)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(ev.labels, calls, labels=[0, 1]).ravel())
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "f1": float(f1_score(ev.labels, calls, zero_division=0)),
            "missed_defects": fn / (tp + fn), "false_alarms": fp / (fp + tn),
            "images": len(ev.scores)}


def trainings_running(ctx: Kensa, name: str) -> list[dict[str, Any]]:
    """Queued or running trainings of the project ("Model 3", status, progress), newest first:
    the Evaluation page says a model is on its way instead of "no trained model"."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        numbers = model_numbers(s, project.id)
        return [
            {"id": mv.id, "label": model_name(numbers.get(mv.id)), "status": mv.status,
             "progress": float(mv.progress or 0.0)}
            for mv in repo.list_model_versions(s, project.id)
            if mv.status in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
        ]


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
                    "bank": bank_name(bank.version),
                    "threshold": float(t.raw_value),
                    "method": t.method,
                    "chosen": method_words(t.method),
                    "active": bool(t.active and bank.is_active),
                    "by": t.created_by or "—",
                    "saved": t.created_at,
                })
    rows.sort(key=lambda r: r["id"], reverse=True)
    return rows


# --------------------------------------------------------------------------- heatmaps

HEAT_ALPHA = 0.5
#: Changes with the colour scale, so cached overlays drawn with an older one are not reused.
HEAT_SCALE_VERSION = "threshold-anchored-1"


def heat_lut() -> np.ndarray:
    """256 RGB colours for the stored heatmaps (0..255, 128 = the model's threshold).

    Stored maps are normalised once per model (0 = the median good score, 0.5 = the threshold,
    1 = twice as far), so a fixed scale means the same colour is the same evidence in every
    image. The scale breaks at the threshold: blues below it (normal), yellow to red from it
    up (beyond what good parts showed), so "above the threshold" is visible at a glance.
    """
    t = np.arange(256, dtype=np.float64) / 255.0
    lut = np.zeros((256, 3), np.float64)
    low = t < 0.5
    a = (t[low] / 0.5)[:, None]
    lut[low] = (1 - a) * np.array([20, 40, 120]) + a * np.array([140, 200, 235])
    b = ((t[~low] - 0.5) / 0.5)[:, None]
    lut[~low] = (1 - b) * np.array([255, 215, 0]) + b * np.array([190, 0, 0])
    return lut.round().astype(np.uint8)


def heat_legend(width: int = 512, height: int = 28) -> bytes:
    """PNG colour bar of :func:`heat_lut`, left = normal, middle = threshold, right = far."""
    row = heat_lut()[np.linspace(0, 255, width).round().astype(int)]
    bar = np.repeat(row[None, :, :], height, axis=0)
    bar[:, width // 2 - 1:width // 2 + 1] = 0  # a black tick at the threshold
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(bar, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        raise RuntimeError("could not encode the heatmap legend")
    return encoded.tobytes()


def _overlay(image_path: str, heatmap_path: str, side: int) -> bytes:
    image = load_image(image_path)
    small = shrink_to_fit(image, side)
    size = (small.shape[1], small.shape[0])
    heat = cv2.imread(heatmap_path, cv2.IMREAD_GRAYSCALE)
    if heat is None:
        raise ImageLoadError(f"{heatmap_path}: cannot read the heatmap")
    heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    colour = heat_lut()[heat]
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
    key = hashlib.sha256(("|".join(stamps) + f"|{side}|square|{HEAT_SCALE_VERSION}").encode()
                         ).hexdigest()
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


def evaluated_images(ev: Evaluation, threshold: float, which: str = "all"
                     ) -> list[dict[str, Any]]:
    """Every held-out image with its call at ``threshold``, highest score first.

    ``which``: "all", "mistakes" (called wrong) or "correct". The page shows each with its
    heatmap, correct calls too, so a person can see what the model looks at on good parts.
    """
    rows = []
    for r in sorted(ev.images, key=lambda r: r.score, reverse=True):
        called_defect = r.score >= threshold
        right = called_defect == bool(r.label)
        if (which == "mistakes" and right) or (which == "correct" and not right):
            continue
        truth = r.defect_type or "defect" if r.label else "good"
        rows.append({"image": r, "right": right,
                     "caption": f"{r.name} · {truth} · score {r.score:.4f} · called "
                                f"{'defect' if called_defect else 'good'}"
                                + ("" if right else " (wrong)")})
    return rows


def save_threshold(ctx: Kensa, name: str, model_version_id: int, value: float,
                   created_by: str = "workbench", confirm_extreme: bool = False
                   ) -> dict[str, Any]:
    """Make ``value`` the threshold in use (a new row; the old one stays as history).

    A value outside the sane range of the validation scores is refused unless
    ``confirm_extreme`` (see ``set_threshold``); the page's slider stays inside that range.

    Only the model in use can get a new threshold: ``set_threshold`` acts on the project's
    active bank, and saving a value measured on another model would silently apply it there.
    """
    with ctx.session(readonly=True) as s:
        active = active_model_version(s, require_project(s, name).id)
    if active is None or active.id != model_version_id:
        raise ValueError("this model is not the model in use; only the newest finished "
                         "model's threshold can be changed")
    return set_threshold(ctx, name, float(value), method="manual", created_by=created_by,
                         confirm_extreme=confirm_extreme)

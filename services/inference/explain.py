"""Explain one image with the project's active model: why good, why defect, compared with what.

The page (``app_pages/explainability.py``) and the CLI (``explain NAME IMAGE``) call this
module; the measuring is :mod:`engine.explain`. What is added here: the active model and
threshold, the held-out good scores the confidence is calibrated on, provenance records from
the database (a bank vector's record id -> training file), readable names, and the
"this is normal" bank update job.

Colour scale: :func:`overlay_png` colours the map normalized by the decision rule in force
(``ThresholdInfo.normalized``: 0 = median held-out good score, 0.5 = the threshold, 1 = twice as
far above that median), so a colour means the same evidence in every image.
:func:`colour_scale_legend` draws that scale as a PNG; ``overlay_png`` draws none. (Lots store
scores normalized on the state's calibration threshold; the two agree unless a person moved
the threshold by hand.)
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

import db.repositories as repo
from db.models import Batch, Prediction
from engine.artifacts import write_bytes_atomic
from engine.data import ImageLoadError, load_image_and_sha256
from engine.explain import ImageEvidence, explain_arrays
from engine.explain import confidence as conf_words
from engine.explain.features import activation_pictures
from engine.explain.overlay import encode_png, legend, overlay
from engine.explain.report import render_html, summary
from engine.models import ProvenanceRecord
from services.context import Kensa
from services.data.projects import require_project
from services.history.provenance import provenance
from services.inference.batches import (
    VALIDATION_PREFIX,
    ActiveModel,
    LoadedModel,
    get_active_model,
    load_model,
)
from services.wording import model_and_bank, model_numbers

#: Loaded models kept per process, by state digest (a new bank version is a new key).
MODEL_CACHE_SIZE = 2
#: Decoded training images kept for neighbour crops (neighbours come from a few images).
TRAINING_CACHE_SIZE = 64
#: Where images a person marked normal from an upload are kept for the bank update job.
NORMAL_UPLOADS = "uploads/marked_normal"


@dataclass
class NearestPatch:
    """One bank vector near a region's peak."""

    record_id: int
    file_name: str
    path: str
    sha256: str
    view: str
    row: int
    col: int
    box: tuple[int, int, int, int]
    distance: float
    crop: np.ndarray

    def as_json(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "file_name": self.file_name, "path": self.path,
                "sha256": self.sha256, "view": self.view, "row": self.row, "col": self.col,
                "box": list(self.box), "distance": _finite(self.distance)}


@dataclass
class RegionExplanation:
    index: int
    box: tuple[int, int, int, int]
    area_px: int
    area_pct: float
    peak: float
    mean: float
    kind: str
    measurements: dict[str, float]
    query_crop: np.ndarray
    nearest: list[NearestPatch]
    #: beyond the contract: the region's outline in image pixels (OpenCV contours)
    contours: list[np.ndarray] = field(default_factory=list, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "box": list(self.box), "area_px": self.area_px,
                "area_pct": self.area_pct, "peak": self.peak, "mean": self.mean,
                "kind": self.kind, "measurements": dict(self.measurements),
                "nearest": [n.as_json() for n in self.nearest]}


@dataclass
class Explanation:
    project: str
    image_name: str
    sha256: str
    verdict: str
    score: float
    threshold: float
    normalized: float
    p_value: float
    false_alarm_rate: float
    knn_spread: float
    confidence_words: list[str]
    summary: str
    model_label: str
    state_version_id: int
    image: np.ndarray
    score_map: np.ndarray
    regions: list[RegionExplanation]
    #: beyond the contract: what overlays, reports and "this is normal" need
    normalized_map: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    neighbours_available: bool = True
    held_out_good: int = 0
    source_path: str | None = None
    upload: bytes | None = field(default=None, repr=False)
    upload_name: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Plain JSON (no arrays): what ``explain --json`` prints and the report shows."""
        return {
            "project": self.project, "image_name": self.image_name, "sha256": self.sha256,
            "verdict": self.verdict, "score": self.score, "threshold": self.threshold,
            "normalized": self.normalized,
            "confidence": {"p_value": self.p_value,
                           "false_alarm_rate": _finite(self.false_alarm_rate),
                           "knn_spread": _finite(self.knn_spread),
                           "held_out_good": self.held_out_good,
                           "words": list(self.confidence_words)},
            "summary": self.summary, "model_label": self.model_label,
            "state_version_id": self.state_version_id,
            "neighbours_available": self.neighbours_available,
            "image_size": [int(self.image.shape[1]), int(self.image.shape[0])],
            "map_min": float(self.score_map.min()), "map_max": float(self.score_map.max()),
            "regions": [r.as_json() for r in self.regions],
        }


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# --------------------------------------------------------------------------- caches

_lock = threading.Lock()
_models: OrderedDict[str, LoadedModel] = OrderedDict()
_training: OrderedDict[tuple[str, str, int, int], np.ndarray | None] = OrderedDict()


def cached_model(active: ActiveModel) -> LoadedModel:
    """The active state's model, loaded once per process and state digest.

    Explaining is interactive (a person clicks through images), and loading a model verifies
    and reads its bank; a changed state has another digest, so nothing stale is ever used.
    """
    with _lock:
        hit = _models.get(active.state_digest)
        if hit is not None:
            _models.move_to_end(active.state_digest)
            return hit
    loaded = load_model(active)  # outside the lock: seconds; a double load is harmless
    with _lock:
        _models[active.state_digest] = loaded
        while len(_models) > MODEL_CACHE_SIZE:
            _models.popitem(last=False)
    return loaded


def training_image(path: str, sha256: str) -> np.ndarray | None:
    """A training image for crops, only if its bytes are still the ones trained on.

    None when it is gone, unreadable or changed: a crop of other pixels would show a person
    a "nearest normal patch" the model never saw.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, sha256, st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _training:
            _training.move_to_end(key)
            return _training[key]
    try:
        image, digest = load_image_and_sha256(path)
        value = image if (not sha256 or digest == sha256) else None
    except (OSError, ImageLoadError):
        value = None
    with _lock:
        _training[key] = value
        while len(_training) > TRAINING_CACHE_SIZE:
            _training.popitem(last=False)
    return value


# --------------------------------------------------------------------------- choosing images


def _lot_rows(session: Any, project_id: int) -> list[tuple[str, str, str, str | None]]:
    """(sha256, image path, lot name, lot source) of every lot prediction, lots in order."""
    stmt = (select(Prediction.image_sha256, Prediction.image_path, Batch.name, Batch.source)
            .join(Batch, Prediction.batch_id == Batch.id)
            .where(Batch.project_id == project_id,
                   ~Batch.name.startswith(VALIDATION_PREFIX))
            .order_by(Batch.id, Prediction.id))
    return [tuple(row) for row in session.execute(stmt)]


def explainable_images(ctx: Kensa, project: str) -> list[dict[str, str]]:
    """Images a person can pick: the project's dataset images, then images of scored lots.

    ``key`` is the sha256 (what :func:`explain_image` takes), ``label`` the path inside the
    dataset (``test/crack/003.png``) or the lot, ``source`` "dataset" or the lot's name,
    ``truth`` the dataset's label ("good", "defect"; "" for lot images). An image in both is
    listed once, as a dataset image.
    """
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        root = Path(proj.data_root)
        out, seen = [], set()
        for img in repo.list_images(s, proj.id):
            out.append({"key": img.sha256, "label": _relative(img.path, root),
                        "source": "dataset", "truth": img.label or ""})
            seen.add(img.sha256)
        for sha, path, lot, source in _lot_rows(s, proj.id):
            if sha in seen:
                continue
            seen.add(sha)
            label = _relative(path, Path(source)) if source else Path(path).name
            out.append({"key": sha, "label": label, "source": lot, "truth": ""})
        return out


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def _path_of(ctx: Kensa, project: str, sha256: str) -> tuple[str, str]:
    """(path, label) of an image of the project or of its lots, by sha256."""
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        img = repo.get_image_by_sha(s, proj.id, sha256)
        if img is not None:
            return img.path, _relative(img.path, Path(proj.data_root))
        for sha, path, _, source in _lot_rows(s, proj.id):
            if sha == sha256:
                return path, (_relative(path, Path(source)) if source else Path(path).name)
    raise LookupError(f"project {project!r} has no image with sha256 {sha256}")


def _decode_upload(data: bytes, name: str | None) -> tuple[np.ndarray, str]:
    """An uploaded file decoded by the same loader (limits, formats) as every other image."""
    suffix = Path(name or "upload.png").suffix or ".png"
    with tempfile.TemporaryDirectory(prefix="kensa-explain-") as tmp:
        path = Path(tmp) / f"upload{suffix.lower()}"
        path.write_bytes(data)
        image, digest = load_image_and_sha256(path)
    return image, digest


# --------------------------------------------------------------------------- explaining


def explain_image(ctx: Kensa, project: str, *, sha256: str | None = None,
                  path: str | Path | None = None, upload: bytes | None = None,
                  upload_name: str | None = None, k: int = 3,
                  model: LoadedModel | None = None) -> Explanation:
    """Explain one image (exactly one of ``sha256``, ``path``, ``upload``) with the active
    model and threshold; ``k`` nearest normal patches per region.

    ``model`` lets a caller that already holds the active model skip the process cache.
    """
    if sum(x is not None for x in (sha256, path, upload)) != 1:
        raise ValueError("give exactly one image: sha256, path or upload")
    if not 1 <= k <= 16:
        raise ValueError(f"k must be in [1, 16], got {k}")
    source_path: str | None = None
    if upload is not None:
        image, digest = _decode_upload(upload, upload_name)
        name = upload_name or "upload"
    else:
        if sha256 is not None:
            found, name = _path_of(ctx, project, sha256)
        else:
            found, name = str(Path(path).expanduser()), Path(path).name  # type: ignore[arg-type]
        image, digest = load_image_and_sha256(found)
        if sha256 is not None and digest != sha256:
            raise ValueError(f"{found} changed since it was imported or scored (sha256 now "
                             f"{digest}); re-scan the project or score it again")
        source_path = str(Path(found).resolve())
    active = get_active_model(ctx, project)
    loaded = model or cached_model(active)
    if loaded.state_digest != active.state_digest:
        raise ValueError("the given model holds another state than the active one; reload it")
    rule = active.rule
    good = list(rule.normal_scores or active.calibration.normal_scores)

    def resolve(ids: Any) -> dict[int, ProvenanceRecord]:
        records = provenance(ctx, project, active.bank_version_id, ids)
        fallback = {r.id: r for r in getattr(loaded.model, "records", ())}
        return {i: records.get(i) or fallback[i] for i in ids if i in records or i in fallback}

    ev = explain_arrays(loaded.model, image, rule.value, good, k=k, resolve=resolve,
                        load=training_image)
    with ctx.session(readonly=True) as s:
        number = model_numbers(s, active.project_id).get(active.model_version_id)
    return _explanation(project, name, digest, image, ev, active, number, source_path,
                        upload, upload_name)


def _explanation(project: str, name: str, digest: str, image: np.ndarray, ev: ImageEvidence,
                 active: ActiveModel, number: int | None, source_path: str | None,
                 upload: bytes | None, upload_name: str | None) -> Explanation:
    h, w = image.shape[:2]
    regions = []
    for i, r in enumerate(ev.regions, start=1):
        reg = r.shaped.region
        nearest = [
            NearestPatch(n.record_id, Path(n.record.path).name if n.record else "unknown",
                         n.record.path if n.record else "", n.record.sha256 if n.record else "",
                         n.record.view if n.record else "", n.row, n.col, n.box, n.distance,
                         n.crop)
            for n in r.neighbours
        ]
        regions.append(RegionExplanation(
            i, r.shaped.box, int(reg.area), 100.0 * reg.area / (h * w), float(reg.peak),
            float(reg.mean), r.shaped.kind, r.shaped.measurements, r.query_crop, nearest,
            r.shaped.contours))
    available = ev.evidence is not None
    words = [conf_words.p_value_words(ev.p_value, ev.n_good, ev.verdict),
             conf_words.false_alarm_words(ev.false_alarm_rate, ev.n_good),
             conf_words.spread_words(ev.knn_spread, ev.k, available)]
    normalized_map = np.asarray(active.rule.normalized(ev.score_map.astype(np.float64)),
                                np.float32)
    e = Explanation(
        project, name, digest, ev.verdict, ev.score, ev.threshold,
        float(active.rule.normalized(ev.score)), ev.p_value, ev.false_alarm_rate,
        ev.knn_spread, words, "", model_and_bank(number, active.bank_version),
        active.bank_version_id, image, ev.score_map, regions, normalized_map, available,
        ev.n_good, source_path, upload, upload_name)
    e.summary = summary(e.as_json(), w, h)
    return e


# --------------------------------------------------------------------------- pictures, docs


def overlay_rgb(e: Explanation, *, alpha: float = 0.5, colormap: str = "jet",
                contours: bool = True, boxes: bool = True) -> np.ndarray:
    return overlay(e.image, e.normalized_map, alpha=alpha, colormap=colormap,
                   contours=[r.contours for r in e.regions] if contours else [],
                   boxes=[r.box for r in e.regions] if boxes else [])


def overlay_png(e: Explanation, *, alpha: float = 0.5, colormap: str = "jet",
                contours: bool = True, boxes: bool = True) -> bytes:
    """PNG of the image under its heatmap on the fixed threshold scale (no legend: see
    :func:`colour_scale_legend`)."""
    return encode_png(overlay_rgb(e, alpha=alpha, colormap=colormap, contours=contours,
                                  boxes=boxes))


def colour_scale_legend(colormap: str = "jet", width: int = 480) -> bytes:
    """PNG of the colour scale every overlay uses (middle = threshold)."""
    return encode_png(legend(colormap, width=width))


def _raw_map_png(e: Explanation) -> bytes:
    lo, hi = float(e.score_map.min()), float(e.score_map.max())
    gray = np.round((e.score_map - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    return encode_png(gray)


def _crop_png(crop: np.ndarray) -> bytes | None:
    return encode_png(crop) if crop.size else None


def report_html(e: Explanation) -> str:
    """Self-contained HTML report: images embedded as ``data:`` URLs, nothing fetched."""
    crops: dict[str, bytes] = {}
    for r in e.regions:
        if (png := _crop_png(r.query_crop)) is not None:
            crops[f"q{r.index}"] = png
        for j, n in enumerate(r.nearest):
            if (png := _crop_png(n.crop)) is not None:
                crops[f"n{r.index}_{j}"] = png
    pictures = {"overlay": overlay_png(e), "legend": colour_scale_legend(),
                "map": _raw_map_png(e)}
    return render_html(e.as_json(), pictures, crops)


def feature_view(ctx: Kensa, project: str, e: Explanation) -> list[tuple[str, np.ndarray]]:
    """What each backbone stage responds to in the image, one picture per stage.

    Empty for models that do not expose their backbone stages (the page says so).
    """
    loaded = cached_model(get_active_model(ctx, project))
    stages = getattr(loaded.model, "stage_activations", None)
    if stages is None:
        return []
    return activation_pictures(e.image, stages(e.image))


def mark_normal(ctx: Kensa, project: str, e: Explanation, *, by: str | None = None) -> int:
    """A person says this image is good: start a bank update job with it; returns the job id.

    The update makes a new bank version (rollback possible). The image scored at or above the
    threshold, which the update refuses on its own; a person's word is what ``force_suspect``
    is for, and the version's note records who said so. An upload is saved first under
    ``$KENSA_HOME/uploads/marked_normal/`` because the job may run in another process.
    """
    from services.history.versions import start_bank_update_job

    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        img = repo.get_image_by_sha(s, proj.id, e.sha256)
        if img is not None and img.label == "defect":
            raise ValueError(f"{e.image_name} is labelled defect in project {project!r}; a "
                             "defect image must never become part of what the model calls good")
    if e.upload is not None:
        suffix = Path(e.upload_name or "upload.png").suffix.lower() or ".png"
        path = ctx.home / NORMAL_UPLOADS / f"{e.sha256}{suffix}"
        if not path.exists():
            write_bytes_atomic(path, e.upload)
    elif e.source_path is not None:
        path = Path(e.source_path)
    else:
        raise ValueError("this explanation keeps no image file to add to the bank")
    who = by or "a person"
    note = (f"{e.image_name} marked normal by {who} on the explanation "
            f"(score {e.score:.4g}, threshold {e.threshold:.4g})")
    return start_bank_update_job(ctx, project, [path], note=note, force_suspect=True)

"""Scoring into the database: batches of predictions made with the active bank and threshold.

Two rules per threshold row (both :class:`services.inference.scoring.ThresholdInfo`):

* the **decision rule** is the active threshold: verdict, confidence and regions;
* the **calibration** is the threshold the bank version was validated with: normalized scores
  and heatmaps. It stays fixed while a person moves the threshold, so normalized scores of
  batches scored before and after a threshold change stay comparable (drift charts), and a
  threshold's own ``normalized_value`` says where it sits on that scale (0.5 = validated).

Models are never cached here: pages wrap :func:`load_model` in ``st.cache_resource`` keyed by
the state's digest (``ActiveModel.state_digest``) and pass the result back in as ``model=``.
Models are reached through :mod:`engine.models.registry` by the state's format, so any
registered detector scores the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import db.repositories as repo
from db.models import ModelVersion, Project, Threshold
from engine.models import AnomalyModel, registry
from services.context import Kensa
from services.data.names import clean_name, lookup_name
from services.data.projects import active_model_version, require_project
from services.inference.scoring import (
    ImagePrediction,
    ScoringProblem,
    ThresholdInfo,
    image_files,
    iter_predictions,
    save_heatmap,
)

#: Predictions committed per transaction: short write locks, so a concurrent process is never
#: starved, and a crash loses at most this many (the rescoring resumes by sha256).
CHUNK = 16
VALIDATION_SOURCE = "validation"
VALIDATION_PREFIX = "validation-m"


def validation_batch_name(model_version_id: int) -> str:
    """Batch holding a model version's held-out scores (the Evaluation page reads it)."""
    return f"{VALIDATION_PREFIX}{model_version_id}"


def threshold_params(
    params: dict[str, Any], normal_scores: Iterable[float], calibration: float
) -> dict[str, Any]:
    """JSON kept with a threshold row: what rebuilding its two rules needs."""
    return {
        **params,
        "normal_scores": [float(s) for s in normal_scores],
        "calibration": float(calibration),
    }


def rules_of(threshold: Threshold) -> tuple[ThresholdInfo, ThresholdInfo]:
    """(decision rule, calibration) of a stored threshold row."""
    normal = tuple(float(s) for s in threshold.params.get("normal_scores", ()))
    calibration = float(threshold.params.get("calibration", threshold.raw_value))
    return (
        ThresholdInfo(float(threshold.raw_value), threshold.method, normal),
        ThresholdInfo(calibration, "calibration", normal),
    )


def state_digest(state_format: str, files: dict[str, str]) -> str:
    """One sha256 for a whole state (format + manifest): a cache key that changes with any
    file of the state."""
    blob = json.dumps({"format": state_format, "files": files}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class ActiveModel:
    """What scoring a project uses right now (rows only; the model is loaded separately).

    ``bank_version`` / ``bank_version_id`` name the active STATE version (a memory bank for
    bank models); the names stay because pages and the CLI speak of bank versions.
    """

    project_id: int
    model_version_id: int
    model_dir: Path
    bank_version_id: int
    bank_version: int
    state_format: str
    state_dir: Path
    files: dict[str, str]
    threshold_id: int
    rule: ThresholdInfo
    calibration: ThresholdInfo

    @property
    def state_digest(self) -> str:
        return state_digest(self.state_format, self.files)


@dataclass(frozen=True)
class LoadedModel:
    """A model with the digest of the state it holds, so a cached one cannot score stale."""

    model: AnomalyModel
    state_digest: str


def active_state_of(ctx: Kensa, session: Session, mv: ModelVersion) -> ActiveModel | None:
    """Active state + threshold of one model version as scoring would use them; None when it
    has none (the caller says why in its own words)."""
    state = repo.get_active_state_version(session, mv.id)
    threshold = repo.get_active_threshold(session, state.id) if state else None
    if state is None or not state.files or threshold is None or mv.artifact_dir is None:
        return None
    rule, calibration = rules_of(threshold)
    model_dir = ctx.resolve(mv.artifact_dir)
    return ActiveModel(mv.project_id, mv.id, model_dir, state.id, state.version,
                       state.state_format, ctx.resolve(state.directory) or model_dir,
                       dict(state.files), threshold.id, rule, calibration)


def active_model(ctx: Kensa, session: Session, project: Project) -> ActiveModel:
    """Active bank + threshold of the project's newest finished model version."""
    mv = active_model_version(session, project.id)
    if mv is None or mv.artifact_dir is None:
        raise LookupError(
            f"project {project.name!r} has no trained model yet; run `train {project.name}`"
        )
    active = active_state_of(ctx, session, mv)
    if active is None:
        raise LookupError(f"model version {mv.id} of {project.name!r} has no active state")
    return active


def get_active_model(ctx: Kensa, name: str) -> ActiveModel:
    with ctx.session(readonly=True) as s:
        return active_model(ctx, s, require_project(s, name))


def load_model(active: ActiveModel, device: str | None = None) -> LoadedModel:
    """Load the active state through the registry; every file of its manifest is checked
    against its sha256 (a mismatch is refused with both digests)."""
    model = registry.load(active.state_format, active.state_dir, files=active.files,
                          device=device)
    return LoadedModel(model, active.state_digest)


def prediction_row(
    ctx: Kensa,
    pred: ImagePrediction,
    calibration: ThresholdInfo,
    heatmap: Path | None,
    state_version_id: int | None,
    threshold_id: int | None,
) -> dict[str, Any]:
    """A ``predictions`` row for one scored image (normalized on the state's calibration)."""
    return {
        "image_sha256": pred.sha256,
        "image_path": pred.path,
        "state_version_id": state_version_id,
        "threshold_id": threshold_id,
        "raw_score": float(pred.raw_score),
        "normalized_score": float(calibration.normalized(pred.raw_score)),
        "verdict": pred.verdict,
        "confidence": float(pred.confidence),
        "regions": pred.regions,
        "heatmap_path": None if heatmap is None else ctx.stored(heatmap),
    }


@dataclass
class BatchResult:
    batch_id: int
    name: str
    created: bool
    files: int
    scored: int
    skipped: int
    bank_version: int
    threshold: float
    predictions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _open_batch(ctx: Kensa, project: Project, name: str, source: str) -> tuple[int, bool]:
    """The batch named ``name``, created if new (a concurrent creator wins harmlessly)."""
    for _ in range(2):
        try:
            with ctx.session() as s:
                batch = repo.get_batch_by_name(s, project.id, name)
                if batch is not None:
                    return batch.id, False
                return repo.create_batch(s, project.id, name, source).id, True
        except IntegrityError:  # PostgreSQL: another process created it between read and insert
            continue
    raise RuntimeError(f"could not create batch {name!r}")


def score_batch(
    ctx: Kensa,
    name: str,
    path: str | Path,
    batch_name: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    model: LoadedModel | None = None,
    chunk: int = CHUNK,
) -> BatchResult:
    """Score an image or a folder into batch ``batch_name`` of project ``name``.

    Images already in the batch (same sha256) are skipped, so rescoring resumes an interrupted
    run. Unreadable files are reported by name and skipped. Each heatmap is written before the
    row that points at it; rows are committed ``chunk`` at a time.

    The batch row is created only once the model has loaded: a model that fails to load (or a
    path without images) leaves no empty batch behind in the history. ``scored`` and
    ``predictions`` are what THIS run inserted: a concurrent run into the same batch that got
    an image in first counts it, this one counts it as ``skipped``.
    """
    batch_name = clean_name(batch_name, "batch")  # NameRefused (a ValueError) says why
    if batch_name.startswith(VALIDATION_PREFIX):
        raise ValueError(f"batch names starting with {VALIDATION_PREFIX!r} are reserved for "
                         "a model's validation scores; choose another batch name")
    files = image_files(Path(path))  # FileNotFoundError names the path
    if not files:
        raise ValueError(f"{path}: no image files (PNG, JPEG, BMP, TIFF) to score")
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        active = active_model(ctx, s, project)
    if model is not None and model.state_digest != active.state_digest:
        raise ValueError("the given model holds another state than the active one; reload it")
    loaded = model or load_model(active)  # before the batch exists: a failure leaves none
    batch_id, created = _open_batch(ctx, project, batch_name, str(Path(path).resolve()))
    with ctx.session(readonly=True) as s:
        skip = repo.scored_shas(s, batch_id)
    result = BatchResult(batch_id, batch_name, created, len(files), 0, 0, active.bank_version,
                         active.rule.value)
    pending: list[dict[str, Any]] = []
    heatmaps: dict[str, str] = {}
    writes: list[Future[str]] = []

    def flush() -> None:
        for write in writes:  # every heatmap on disk before a row points at it
            write.result()
        writes.clear()
        if pending:
            with ctx.session() as s:
                inserted = repo.add_new_predictions(s, batch_id, pending)
            result.scored += len(inserted)
            result.predictions += [{**row, "heatmap_path": heatmaps[row["image_sha256"]]}
                                   for row in pending if row["image_sha256"] in inserted]
            pending.clear()

    # Heatmaps are encoded and written (fsync'd twice each) on one side thread while the
    # model scores the next image: at small image sizes the writes alone cost ~15 % of the
    # scoring time (bench/lot_scoring.py). fsync and PNG encoding release the GIL.
    # ``skip`` grows as we go, so a file present twice in the folder is scored once.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="heatmaps") as writer:
        for item in iter_predictions(loaded.model, files, active.rule, skip, progress):
            if isinstance(item, ScoringProblem):
                result.problems.append({"path": item.path, "problem": item.message})
                continue
            skip.add(item.sha256)
            heatmap = ctx.heatmap_path(project.id, batch_id, item.sha256)
            writes.append(writer.submit(save_heatmap, item.score_map, active.calibration,
                                        heatmap))
            row = prediction_row(ctx, item, active.calibration, heatmap,
                                 active.bank_version_id, active.threshold_id)
            pending.append(row)
            heatmaps[item.sha256] = str(heatmap)
            if len(pending) >= chunk:
                flush()
        flush()
    with ctx.session() as s:
        repo.finish_batch(s, batch_id)
    # Already in the batch (before or by a concurrent run), or the same content twice here.
    result.skipped = len(files) - len(result.problems) - result.scored
    return result


def list_batches(ctx: Kensa, name: str) -> list[dict[str, Any]]:
    """Batches oldest first, with prediction and verdict counts."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        return [dict(b.__dict__) for b in repo.batch_summaries(s, project.id)]


def batch_predictions(ctx: Kensa, name: str, batch_name: str) -> list[dict[str, Any]]:
    """Stored predictions of a batch with the image's label when it is a dataset image.

    The Evaluation page reads the ``validation-m<id>`` batch this way: curves, histograms and
    the worst false positives / negatives come from these rows, not from re-scoring.
    """
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        batch = repo.get_batch_by_name(s, project.id, lookup_name(batch_name))
        if batch is None:
            raise LookupError(f"project {name!r} has no batch named {batch_name!r}")
        labels = {i.sha256: i for i in repo.list_images(s, project.id)}
        out = []
        for p in repo.list_predictions(s, batch.id):
            image = labels.get(p.image_sha256)
            out.append({
                "id": p.id, "image_sha256": p.image_sha256, "image_path": p.image_path,
                "label": image.label if image else None,
                "defect_type": image.defect_type if image else None,
                "state_version_id": p.state_version_id, "threshold_id": p.threshold_id,
                "raw_score": p.raw_score, "normalized_score": p.normalized_score,
                "verdict": p.verdict, "confidence": p.confidence, "regions": p.regions,
                "heatmap_path": str(ctx.resolve(p.heatmap_path)) if p.heatmap_path else None,
                "reviewed_verdict": p.reviewed_verdict, "created_at": p.created_at,
            })
        return out

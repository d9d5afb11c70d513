"""Training inside a project: a queued ``model_versions`` row, worked on by a job (``train``
kind, see ``services.jobs``): inline in the CLI or in a queue worker.

While it runs, the worker writes stage and progress in short transactions and reads the row's
status to notice a Cancel pressed in another process. Everything a finished run adds (model
files, bank v1, its threshold, the validation batch with one prediction per held-out image)
appears at once: files first, then ONE transaction for the rows, so no reader ever sees a bank
without a threshold or a row pointing at a file that is not there yet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

import db.repositories as repo
from db.models import ModelVersion, RunStatus, StateKind
from engine.artifacts import write_bytes_atomic
from engine.models import Capability, ProgressFn, registry
from engine.regions import find_regions
from services.context import Kensa
from services.data.projects import project_index, require_project
from services.history.provenance import state_columns, store_records
from services.inference.batches import (
    VALIDATION_SOURCE,
    prediction_row,
    threshold_params,
    validation_batch_name,
)
from services.inference.scoring import ImagePrediction, ThresholdInfo, save_heatmap
from services.jobs.runner import plain_message
from services.training.fit import (
    AUGMENTED_COPIES,
    TrainingCancelled,
    TrainingInputError,
    TrainOutcome,
    Validation,
    train_model,
    training_shortfall,
)
from services.wording import count, model_numbers

#: Progress at which fitting and validation end and writing the artifacts begins.
SAVING_AT = 0.95
#: Folders of a model version's artifacts: the augmented copies it learned from, and the
#: synthetic defects (image and mask) its threshold was set on when no defect was held out.
AUGMENTED_DIR, SYNTHETIC_DIR = "augmented", "synthetic"


def augmentation_params(ctx: Kensa, name: str, augmentation: str | None = "auto"
                        ) -> dict[str, Any] | None:
    """What a run records in ``params["augmentation"]``: the preset marked for training
    (``"auto"``), the named one (PresetError, a ValueError, if there is none), or None
    (``None``, or "auto" with none marked).

    The full config is copied in, so the run stays reproducible when the preset is edited or
    deleted later.
    """
    from services.augmentation.presets import get_preset, load_config, training_preset

    if augmentation is None:
        return None
    preset = (training_preset(ctx, name) if augmentation == "auto"
              else get_preset(ctx, name, augmentation))
    if preset is None:
        return None
    config = load_config(preset)
    return {"preset": preset["name"], "preset_id": preset["id"], "copies": AUGMENTED_COPIES,
            "config": config.to_json()}


def request_training(
    ctx: Kensa,
    name: str,
    shots: int | None = None,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    algorithm: str = registry.DEFAULT_MODEL,
    augmentation: str | None | Literal["auto"] = "auto",
) -> int:
    """Queue a training run of ``algorithm`` (a registry name); bad parameters are refused
    now, not minutes later in a worker.

    ``augmentation``: "auto" adds the copies of the project's preset marked for training (if
    any), a preset name that preset's, None none (see :func:`augmentation_params`).
    """
    model_params = dict(params or {})
    config = registry.validate(algorithm, model_params)
    augmented = augmentation_params(ctx, name, augmentation)
    with ctx.session() as s:
        project = require_project(s, name)
        counts = repo.image_counts(s, project.id)
        n_good = sum(n for (split, label, _), n in counts.items()
                     if split == "train" and label == "good")
        n_good_all = sum(n for (_, label, _), n in counts.items() if label == "good")
        n_defect = sum(n for (_, label, _), n in counts.items() if label == "defect")
        # what would fail minutes later in a worker is refused now, in one plain sentence
        problem = training_shortfall(n_good, n_good_all - n_good, n_defect, shots)
        if problem:
            raise TrainingInputError(problem)
        run_params: dict[str, Any] = {"shots": shots, "seed": seed, "model": model_params}
        if augmented is not None:
            run_params["augmentation"] = augmented
        mv = repo.create_model_version(s, project.id, algorithm, config.get("backbone"),
                                       run_params)
        return mv.id


class _RunReporter:
    """Progress into the row (throttled, one short transaction each) and the cancel check."""

    def __init__(self, ctx: Kensa, model_version_id: int, echo: ProgressFn | None,
                 interval_s: float = 0.5) -> None:
        self.ctx, self.id, self.echo, self.interval = ctx, model_version_id, echo, interval_s
        self._stage: str | None = None
        self._written = self._checked = 0.0
        self._cancelled = False

    def __call__(self, stage: str, fraction: float) -> None:
        fraction *= SAVING_AT  # train_model's 0..1, then saving the artifacts
        if self.echo:
            self.echo(stage, fraction)
        now = time.monotonic()
        if stage == self._stage and now - self._written < self.interval:
            return
        self._stage, self._written = stage, now
        with self.ctx.session() as s:
            still_running = repo.update_progress(s, self.id, fraction, stage)
        if not still_running:
            raise TrainingCancelled(f"training cancelled while {stage}")

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked >= self.interval / 2:
            self._checked = now
            with self.ctx.session(readonly=True) as s:
                mv = repo.get_model_version(s, self.id)
                self._cancelled = mv is None or mv.status == RunStatus.CANCELLED.value
        return self._cancelled


def run_training(ctx: Kensa, model_version_id: int, progress: ProgressFn | None = None
                 ) -> dict[str, Any]:
    """Train a queued model version to the end; returns its row as a dict.

    On error the row becomes ``failed`` with the error text and the error is raised again; on
    Cancel it becomes ``cancelled`` and :class:`TrainingCancelled` is raised.
    """
    with ctx.session() as s:
        mv = repo.get_model_version(s, model_version_id)
        if mv is None:
            raise LookupError(f"no model version {model_version_id}")
        if mv.status != RunStatus.QUEUED.value:
            raise ValueError(f"model version {model_version_id} is {mv.status}; "
                             "only a queued run can start")
        project = repo.get_project(s, mv.project_id)
        index = project_index(s, project)
        images = {img.path: img for img in repo.list_images(s, project.id)}
        if not repo.start_model_version(s, model_version_id, stage="starting"):
            raise TrainingCancelled("training was cancelled before it started")
    reporter = _RunReporter(ctx, model_version_id, progress)
    try:
        outcome = train_model(
            index, shots=mv.params.get("shots"), seed=int(mv.params.get("seed", 0)),
            algorithm=mv.algorithm, params=dict(mv.params.get("model", {})),
            progress=reporter, cancelled=reporter.cancelled,
            expected_sha256={path: img.sha256 for path, img in images.items()},
            augmentation=mv.params.get("augmentation"),
            augmented_dir=ctx.model_dir(project.id, mv.id) / AUGMENTED_DIR,
        )
        reporter("saving model, bank and validation scores", 1.0)
        _commit(ctx, project.id, mv, outcome, images)
    except TrainingCancelled as exc:
        with ctx.session() as s:
            repo.finish_model_version(s, model_version_id, RunStatus.CANCELLED.value,
                                      error=str(exc))
        raise
    except BaseException as exc:  # KeyboardInterrupt too: never leave it "running"
        with ctx.session() as s:
            repo.finish_model_version(s, model_version_id, RunStatus.FAILED.value,
                                      error=plain_message(exc))
        raise
    return get_model_version(ctx, model_version_id)


def _scaled_regions(score_map: np.ndarray, threshold: float, width: int | None,
                    height: int | None) -> list[dict[str, Any]]:
    """Regions of a shrunk validation map, boxes scaled back to original image pixels."""
    h, w = score_map.shape
    sx, sy = (width or w) / w, (height or h) / h
    out = []
    for r in find_regions(score_map, threshold):
        d = r.as_dict()
        d.update(x=round(d["x"] * sx), y=round(d["y"] * sy), width=round(d["width"] * sx),
                 height=round(d["height"] * sy), area=round(d["area"] * sx * sy))
        out.append(d)
    return out


def _write_synthetic(ctx: Kensa, directory: Path, val: Validation
                     ) -> dict[int, tuple[str, str, int, int]]:
    """Write the synthetic defects (image and mask PNGs) a threshold was set on.

    Returns ``{validation index: (path, sha256, width, height)}``; the path is the file
    written, so the Evaluation page shows the very pixels that were scored.
    """
    out = {}
    for i, entry in val.synthetic.items():
        path = (directory / entry.name).resolve()
        digest = write_bytes_atomic(path, entry.png)
        write_bytes_atomic(directory / entry.mask_name, entry.mask_png)
        out[i] = (str(path), digest, entry.width, entry.height)
    return out


def _synthetic_record(ctx: Kensa, directory: Path, val: Validation,
                      written: dict[int, tuple[str, str, int, int]]) -> list[dict[str, str]]:
    """``metrics["synthetic_validation"]``: which predictions are synthetic defects."""
    return [{"path": ctx.stored(written[i][0]), "sha256": written[i][1], "kind": e.kind,
             "source": e.source, "mask_path": ctx.stored(directory / e.mask_name)}
            for i, e in sorted(val.synthetic.items())]


def _commit(ctx: Kensa, project_id: int, mv: ModelVersion, outcome: TrainOutcome,
            images: dict[str, Any]) -> None:
    """Write the artifacts, then every row of the finished run in one transaction."""
    model_dir = ctx.model_dir(project_id, mv.id)
    digests = outcome.model.save(model_dir)
    val, thr = outcome.validation, outcome.threshold
    rule = ThresholdInfo(float(thr.value), thr.method, tuple(float(s) for s in val.normal_scores))
    synthetic = _write_synthetic(ctx, model_dir / SYNTHETIC_DIR, val)
    rows = []
    for i, (path, raw, score_map) in enumerate(zip(val.paths, val.scores, val.maps,
                                                   strict=True)):
        if i in synthetic:  # painted into a held-out good image; not in the images table
            path, sha256, width, height = synthetic[i]
        else:
            image = images[path]
            sha256, width, height = image.sha256, image.width, image.height
        raw = float(raw)
        verdict = "defect" if raw >= rule.value else "good"
        regions = (_scaled_regions(score_map, rule.value, width, height)
                   if verdict == "defect" else [])
        pred = ImagePrediction(path, sha256, raw, float(rule.normalized(raw)), verdict,
                               rule.confidence(raw), regions)
        heatmap = ctx.validation_heatmap(project_id, mv.id, sha256)
        save_heatmap(score_map, rule, heatmap)
        rows.append(prediction_row(ctx, pred, rule, heatmap, None, None))
    model = outcome.model
    metrics = {
        **outcome.metrics,
        "threshold": {"method": thr.method, "value": float(thr.value), "params": thr.params},
        "shots": outcome.shots,
        "fit": outcome.fit._asdict(),
        "validation_images": len(val.paths) - len(val.synthetic),  # real held-out images
        "skipped": outcome.skipped,
    }
    if synthetic:  # the image (and pixel) numbers measure painted defects, not real ones
        metrics["synthetic_validation"] = _synthetic_record(ctx, model_dir / SYNTHETIC_DIR,
                                                            val, synthetic)
        metrics["metrics_on"] = "synthetic"
    if outcome.augmentation is not None:
        metrics["augmentation"] = outcome.augmentation
    with ctx.session() as s:
        if not repo.finish_model_version(
            s, mv.id, RunStatus.DONE.value, metrics=metrics,
            fit_seconds=outcome.fit.fit_seconds, artifact_dir=ctx.stored(model_dir),
        ):
            raise TrainingCancelled("training cancelled while saving")
        bank_row = repo.add_state_version(
            s, mv.id, kind=StateKind.INITIAL.value, state_format=mv.algorithm,
            directory=ctx.stored(model_dir), files=digests, **state_columns(model),
            source_images=[images[p].sha256 for p in outcome.shots],
            note=f"trained on {count(len(outcome.shots), 'image')}",
        )
        threshold = repo.add_threshold(
            s, bank_row.id, method=thr.method, raw_value=float(thr.value),
            normalized_value=float(rule.normalized(float(thr.value))),
            params=threshold_params(thr.params, val.normal_scores, thr.value),
            created_by="training",
        )
        batch = repo.create_batch(s, project_id, validation_batch_name(mv.id), VALIDATION_SOURCE)
        repo.add_predictions(s, batch.id, [
            {**r, "state_version_id": bank_row.id, "threshold_id": threshold.id} for r in rows
        ])
        repo.finish_batch(s, batch.id)
        if Capability.NEAREST_PATCHES in model.capabilities:
            store_records(s, mv.id, bank_row.id, model.records)  # type: ignore[attr-defined]


def train_project(ctx: Kensa, name: str, shots: int | None = None, seed: int = 0,
                  params: dict[str, Any] | None = None, progress: ProgressFn | None = None,
                  algorithm: str = registry.DEFAULT_MODEL,
                  augmentation: str | None | Literal["auto"] = "auto") -> dict[str, Any]:
    """Queue and run a training in this process as a job (the CLI's ``train NAME``).

    Same job path as a worker (row, heartbeat, Cancel from another process); raises
    ``JobCancelled`` / ``JobFailed`` (RuntimeErrors) with the job's plain message.
    """
    from services.jobs.api import submit_inline

    mv_id = request_training(ctx, name, shots, seed, params, algorithm, augmentation)
    _, mv = submit_inline(ctx, "train", {"model_version_id": mv_id},
                          project_id=get_model_version(ctx, mv_id)["project_id"], echo=progress)
    return mv


def start_training_job(ctx: Kensa, model_version_id: int) -> int:
    """Hand a queued training to the job queue; returns the job id at once.

    The page polls :func:`training_job`; a reload loses nothing.
    """
    from services.jobs.api import submit

    project_id = get_model_version(ctx, model_version_id)["project_id"]
    return submit(ctx, "train", {"model_version_id": model_version_id}, project_id=project_id)


def training_job(ctx: Kensa, model_version_id: int) -> dict[str, Any] | None:
    """The newest job that trains this model version (None for runs older than jobs)."""
    from services.jobs.api import list_jobs

    mv = get_model_version(ctx, model_version_id)
    with ctx.session(readonly=True) as s:
        project = repo.get_project(s, mv["project_id"])
    for job in list_jobs(ctx, project.name if project else None, kinds=["train"], limit=None):
        if job["payload"].get("model_version_id") == model_version_id:
            return job
    return None


def cancel_training(ctx: Kensa, model_version_id: int) -> bool:
    """Ask a queued or running training to stop; False if it had already ended.

    Through its job when it has one (the job and the model version row end together).
    """
    from services.jobs.api import cancel

    job = training_job(ctx, model_version_id)
    if job is not None and job["status"] in ("queued", "running"):
        return cancel(ctx, job["id"]) is not None
    with ctx.session() as s:
        return repo.cancel_model_version(s, model_version_id)


def _mv_dict(mv: ModelVersion) -> dict[str, Any]:
    return {
        "id": mv.id, "project_id": mv.project_id, "algorithm": mv.algorithm,
        "backbone": mv.backbone, "params": mv.params, "metrics": mv.metrics,
        "status": mv.status, "stage": mv.stage, "progress": mv.progress, "error": mv.error,
        "started_at": mv.started_at, "finished_at": mv.finished_at,
        "fit_seconds": mv.fit_seconds, "artifact_dir": mv.artifact_dir,
        "created_at": mv.created_at, "heartbeat_at": mv.heartbeat_at,
    }


def get_model_version(ctx: Kensa, model_version_id: int) -> dict[str, Any]:
    """One run's row (the Training page polls this for live progress)."""
    with ctx.session(readonly=True) as s:
        mv = repo.get_model_version(s, model_version_id)
        if mv is None:
            raise LookupError(f"no model version {model_version_id}")
        return _mv_dict(mv)


def list_model_versions(ctx: Kensa, name: str) -> list[dict[str, Any]]:
    """Newest first."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        numbers = model_numbers(s, project.id)
        return [{**_mv_dict(mv), "number": numbers.get(mv.id)}
                for mv in repo.list_model_versions(s, project.id)]

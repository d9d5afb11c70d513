"""What the Training page needs around the training services: a recommendation with its
reasons, the parameter choices with safe ranges, live runs and a readable run history.

Training itself lives in ``services.training.project`` (queue a row, run it in a detached
worker); this module only prepares and summarises, so the page stays a drawing of its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import db.repositories as repo
from db.models import ACTIVE_STATUSES, utcnow
from engine.backbones import DEFAULT_BACKBONE, REGISTRY
from engine.models import registry
from services.context import Kensa
from services.data.projects import require_project
from services.training.project import (
    cancel_training,
    list_model_versions,
    request_training,
    start_training_job,
)

IMAGE_SIZE_RANGE = (128, 768)
#: A queued run whose worker has not written anything after this long is reported as stuck.
STUCK_QUEUED_S = 90
#: A running worker that has written no progress for this long is reported as stopped. The
#: longest silent step is the coreset of a large bank (about a minute for 64 shots of 1024 px).
STUCK_RUNNING_S = 300
IMAGE_SIZE_STEP = 32
SEED_MAX = 999_999
#: Good images that must stay out of training when there are no defect images, so that the
#: threshold can be set from the spread of held-out good scores (mean + 3 sigma needs two).
MIN_HELD_OUT_GOOD = 2


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    description: str
    needs_network: bool


@dataclass
class TrainingSetup:
    """The project's data as training sees it, the recommendation and the parameter ranges."""

    n_good_train: int
    n_good_other: int
    n_defect: int
    algorithm: str
    title: str
    reasons: list[str]
    backbones: list[BackboneChoice]
    default_backbone: str
    default_image_size: int
    active: list[dict[str, Any]] = field(default_factory=list)

    @property
    def can_train(self) -> bool:
        return self.n_good_train > 0

    def max_shots_for_threshold(self) -> int:
        """Most shots that still leave data to choose a threshold on."""
        if self.n_defect or self.n_good_other >= MIN_HELD_OUT_GOOD:
            return self.n_good_train
        return max(0, self.n_good_train - (MIN_HELD_OUT_GOOD - self.n_good_other))


def _reasons(n_good: int, n_good_other: int, n_defect: int) -> list[str]:
    reasons = [
        f"It learns from good images only. This project has {n_good} good training "
        f"image{'s' if n_good != 1 else ''}; the model remembers what normal surface patches "
        "look like and flags whatever is far from all of them.",
    ]
    if n_good <= 50:
        reasons.append(
            "It is made for few images: it works from a single good image up (flipped and "
            "rotated copies are added while the images are few)."
        )
    if n_defect:
        reasons.append(
            f"No defect images are needed to train. The {n_defect} defect image"
            f"{'s' if n_defect != 1 else ''} and {n_good_other} held-out good image"
            f"{'s' if n_good_other != 1 else ''} measure the model and set the threshold."
        )
    else:
        reasons.append(
            "No defect images are needed to train. Without any, the threshold is set from the "
            "spread of held-out good images; add a few defect images to measure the model."
        )
    reasons.append(
        "It is fast on an ordinary CPU and works offline: the default backbone's weights ship "
        "with Kensa, and training has no slow optimisation loop (one pass over the images)."
    )
    return reasons


def _default_image_size() -> int:
    return int(registry.spec(registry.DEFAULT_MODEL).default_config["image_size"])


def training_setup(ctx: Kensa, name: str) -> TrainingSetup:
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        counts = repo.image_counts(s, project.id)
        active = [
            _run_dict(mv) for mv in repo.list_model_versions(s, project.id)
            if mv.status in ACTIVE_STATUSES
        ]
    n_good_train = sum(n for (split, label, _), n in counts.items()
                       if split == "train" and label == "good")
    n_good = sum(n for (_, label, _), n in counts.items() if label == "good")
    n_defect = sum(n for (_, label, _), n in counts.items() if label == "defect")
    model = registry.spec(registry.DEFAULT_MODEL)
    backbones = [
        BackboneChoice(spec.name, spec.description, spec.weights == "hub")
        for spec in REGISTRY.values()
    ]
    return TrainingSetup(
        n_good_train=n_good_train,
        n_good_other=n_good - n_good_train,
        n_defect=n_defect,
        algorithm=model.name,
        title=model.title,
        reasons=_reasons(n_good_train, n_good - n_good_train, n_defect),
        backbones=backbones,
        default_backbone=DEFAULT_BACKBONE,
        default_image_size=int(model.default_config["image_size"]),
        active=active,
    )


def start_training(ctx: Kensa, name: str, *, shots: int | None, seed: int, backbone: str,
                   image_size: int) -> int:
    """Queue a run and hand it to the job queue; returns at once with the model version id."""
    lo, hi = IMAGE_SIZE_RANGE
    if not lo <= image_size <= hi:
        raise ValueError(f"image size must be between {lo} and {hi} pixels")
    if backbone not in REGISTRY:
        raise ValueError(f"unknown backbone {backbone!r}")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be between 0 and {SEED_MAX}")
    mv_id = request_training(ctx, name, shots, seed,
                             {"backbone": backbone, "image_size": int(image_size)})
    try:
        start_training_job(ctx, mv_id)
    except Exception:
        cancel_training(ctx, mv_id)  # never leave a queued row nobody will work on
        raise
    return mv_id


def active_runs(ctx: Kensa, name: str) -> list[dict[str, Any]]:
    """Queued or running trainings of the project, newest first (the live panel polls this).

    Stage, progress, error and the worker's silence come from the run's job row when it has
    one (reading it also reaps jobs whose worker died, which ends their run as failed).
    """
    from services.jobs.api import list_jobs

    jobs: dict[int, dict[str, Any]] = {}
    for job in list_jobs(ctx, name, kinds=["train"], active=True, limit=None):
        jobs.setdefault(int(job["payload"].get("model_version_id", 0)), job)
    runs = []
    for r in list_model_versions(ctx, name):
        if r["status"] not in ACTIVE_STATUSES:
            continue
        summary = _run_summary(r)
        job = jobs.get(r["id"])
        summary["job_id"] = job["id"] if job else None
        if job is not None:
            summary.update({k: job[k] for k in ("stage", "progress", "silent_s", "waiting_s",
                                                "attempts", "cancel_requested")})
            summary["error"] = job["error"] or summary["error"]
        runs.append(summary)
    return runs


def cancel(ctx: Kensa, model_version_id: int) -> bool:
    return cancel_training(ctx, model_version_id)


def _run_dict(mv: Any) -> dict[str, Any]:
    return {"id": mv.id, "status": mv.status, "stage": mv.stage, "progress": mv.progress,
            "started_at": mv.started_at, "created_at": mv.created_at}


def _run_summary(run: dict[str, Any]) -> dict[str, Any]:
    out = {k: run[k] for k in ("id", "status", "stage", "progress", "started_at", "created_at",
                               "finished_at", "error")}
    # How long a running worker has been silent: progress is written at least every few
    # seconds, so minutes of silence mean the worker died (killed, out of memory).
    last_sign = run.get("heartbeat_at") or run["started_at"]
    out["silent_s"] = ((utcnow() - last_sign).total_seconds()
                       if run["status"] == "running" and last_sign else 0.0)
    # How long a queued run has waited for its worker: a worker that never starts (broken
    # environment, killed) would otherwise leave the panel at "queued" forever.
    out["waiting_s"] = ((utcnow() - run["created_at"]).total_seconds()
                        if run["status"] == "queued" and run["created_at"] else 0.0)
    return out


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    seconds = (end - start).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _metric(metrics: dict[str, Any], key: str, digits: int = 3) -> str:
    """A stored metric as the table shows it; "—" when the run did not produce it."""
    value = metrics.get(key)
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"


def run_history(ctx: Kensa, name: str) -> list[dict[str, Any]]:
    """One row per run, newest first, as the page shows it (numbers already formatted, "—"
    where a run has no value, e.g. pixel scores without masks or a run still going)."""
    rows = []
    for run in list_model_versions(ctx, name):
        params, metrics = run["params"] or {}, run["metrics"] or {}
        model = params.get("model", {})
        shots_used = metrics.get("shots")
        if isinstance(shots_used, list):
            shots = len(shots_used)
        else:
            shots = params.get("shots") if params.get("shots") is not None else "all"
        threshold = metrics.get("threshold")
        rows.append({
            "version": f"v{run['id']}",
            "status": run["status"],
            "started": run["started_at"] or run["created_at"],
            "duration": _duration(run["started_at"], run["finished_at"]),
            "shots": str(shots),
            "image AUROC": _metric(metrics, "image_auroc"),
            "AP": _metric(metrics, "image_ap"),
            "F1": _metric(metrics, "image_f1"),
            "pixel AUROC": _metric(metrics, "pixel_auroc"),
            "AUPRO": _metric(metrics, "aupro"),
            "threshold": _metric(threshold if isinstance(threshold, dict) else metrics,
                                 "value" if isinstance(threshold, dict) else "threshold", 4),
            "backbone": run["backbone"] or model.get("backbone", DEFAULT_BACKBONE),
            "image size": model.get("image_size", _default_image_size()),
            "seed": params.get("seed", 0),
            "note": (run["error"] or "")[:200],
        })
    return rows

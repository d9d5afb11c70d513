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
from engine.models.recommend import prior
from services.context import Kensa
from services.data.projects import require_project
from services.training.compare import comparison_result
from services.training.fit import (
    AUGMENTED_COPIES,
    FIT_S,
    LOAD_S,
    MAX_AUGMENTED,
    SCORE_S,
    STARTUP_S,
    held_out_needed,
    synthetic_plan,
    training_shortfall,
)
from services.training.project import (
    cancel_training,
    list_model_versions,
    request_training,
    start_training_job,
)
from services.wording import count, model_name

#: The model a project trains unless another is chosen (Kensa's own few-shot PatchCore).
DEFAULT_MODEL = registry.DEFAULT_MODEL
IMAGE_SIZE_RANGE = (128, 768)
#: A queued run whose worker has not written anything after this long is reported as stuck.
STUCK_QUEUED_S = 90
#: A running worker whose job has written no heartbeat for this long is reported as stopped.
#: The heartbeat comes from a thread every few seconds whatever the training is doing (see
#: services/jobs/runner.py), so this is six missed beats, not a slow step; the reaper fails the
#: run at KENSA_JOB_TIMEOUT_S (90 s). Progress itself is reported at least every 2 s.
STUCK_RUNNING_S = 30
#: A time estimate is shown once a run is this far along and has run this long (earlier, the
#: rate is mostly start-up and the estimate would jump around).
ETA_MIN_PROGRESS, ETA_MIN_ELAPSED_S = 0.03, 5.0
IMAGE_SIZE_STEP = 32
#: the colour setting's choices, worded for the Training page (engine.models.colour decides
#: "auto" from the good images)
COLOUR_CHOICES = {
    "auto": "Decide from the good images (recommended)",
    "rgb": "Colour matters: a part in another colour is a defect",
    "gray": "Ignore colour: good parts come in several colours",
}
SEED_MAX = 999_999
#: Good images that must stay out of training when there are no defect images, so that the
#: threshold can be set from the spread of held-out good scores (mean + 3 sigma needs two).
MIN_HELD_OUT_GOOD = held_out_needed(0)


#: Settings of Kensa's own model; the page shows each only for models whose default_config
#: has the key (a model that has no colour rule gets no colour question).
KENSA_SETTINGS = ("backbone", "image_size", "colour", "views")
#: Settings of models trained in an optimisation loop, with their safe ranges: epochs, images
#: per step, and early stopping (epochs without improvement before it stops; 0: off).
TRAINING_RANGES = {"epochs": (1, 500), "batch_size": (1, 128), "patience": (0, 100)}


@dataclass(frozen=True)
class ModelChoice:
    """One registered model as the Training page offers it."""

    name: str
    title: str
    description: str
    needs_network: bool
    defaults: dict[str, Any]
    #: why it sits where it does: the decision table's reason, or the comparison's for the pick
    reason: str
    #: chosen by a comparison on this project's images (not only by the table)
    measured: bool = False
    #: tens of minutes per training without a GPU (see ModelSpec.slow_without_gpu)
    slow_without_gpu: bool = False

    def has(self, key: str) -> bool:
        """Whether the model has this setting (the page shows only the ones it has)."""
        return key in self.defaults


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
    #: what a training of all good images would take on this machine, in words
    duration: str = ""
    #: which preset adds how many augmented copies per good image, in words
    augmentation: str = ""
    #: every registered model, the recommended one first (a comparison's pick, else the table's)
    models: list[ModelChoice] = field(default_factory=list)

    @property
    def can_train(self) -> bool:
        return self.n_good_train > 0

    def shortfall(self, shots: int | None = None) -> str | None:
        """The one sentence that says what to add before training can run (None: it can);
        the page disables Train and shows it, the service refuses with it."""
        return training_shortfall(self.n_good_train, self.n_good_other, self.n_defect, shots)

    @property
    def held_back(self) -> int:
        """Good training images "all" keeps aside to set the threshold (see split_records)."""
        if self.shortfall() is not None:
            return 0
        return max(0, held_out_needed(self.n_defect) - self.n_good_other)

    @property
    def all_goods_words(self) -> str:
        """The "all good images" choice in words, with what it keeps aside for the threshold."""
        words = ("The one good training image" if self.n_good_train == 1
                 else f"All {self.n_good_train} good training images")
        held = self.held_back
        return words + (f" ({held} kept aside to set the threshold)" if held else "")

    def max_shots_for_threshold(self) -> int:
        """Most shots that still leave data to choose a threshold on."""
        return max(0, self.n_good_train
                   - max(0, held_out_needed(self.n_defect) - self.n_good_other))


def _reasons(n_good: int, n_good_other: int, n_defect: int) -> list[str]:
    reasons = [
        f"It learns from good images only. This project has {n_good} good training "
        f"image{'s' if n_good != 1 else ''}; the model remembers what normal surface patches "
        "look like and flags whatever is far from all of them.",
    ]
    if n_good <= 50:
        reasons.append(
            "It is made for few images: it learns from as few as one good image (flipped and "
            "rotated copies are added while the images are few). Setting the threshold needs "
            "two more good images kept aside, or one more and a few defect images."
        )
    if n_defect:
        reasons.append(
            f"No defect images are needed to train. The {n_defect} defect image"
            f"{'s' if n_defect != 1 else ''} and {n_good_other} held-out good image"
            f"{'s' if n_good_other != 1 else ''} measure the model and set the threshold."
        )
    else:
        reasons.append(
            "No defect images are needed to train. Without any, the threshold is set on "
            "synthetic defects painted into held-out good images; add a few real defect images "
            "to measure the model."
        )
    reasons.append(
        "It works offline: the default backbone's weights ship with Kensa, and training is one "
        "pass over the images, with no slow optimisation loop."
    )
    return reasons


def _seconds_words(seconds: float) -> str:
    """"about 40 s" / "about 3 min": estimates are rounded so they do not look precise."""
    if seconds < 60:
        return f"about {max(5, int(round(seconds / 5.0)) * 5)} s"
    return f"about {max(1, round(seconds / 60))} min"


def eta_words(seconds: float | None) -> str | None:
    """The live panel's estimate, e.g. "about 40 s left" (None while there is none)."""
    return None if seconds is None else f"{_seconds_words(seconds)} left"


def expected_duration(runs: list[dict[str, Any]], n_train: int, n_held: int
                      ) -> tuple[float, bool]:
    """(seconds, measured) for a training of ``n_train`` images with ``n_held`` held out.

    From the newest finished run of the project (its seconds per image, scaled to these
    counts) when there is one: that is this machine under its usual load; otherwise from
    the per-image costs measured by bench/train_scale.py (``services.training.fit``).
    """
    for run in runs:
        metrics = run.get("metrics") or {}
        shots = metrics.get("shots")
        if (run["status"] != "done" or not run.get("started_at") or not run.get("finished_at")
                or not isinstance(shots, list) or not shots):
            continue
        took = (run["finished_at"] - run["started_at"]).total_seconds()
        # what that run really fitted and scored: augmented copies and synthetic defects too
        fitted = len(shots) + int((metrics.get("augmentation") or {}).get("augmented_images", 0))
        held = (int(metrics.get("validation_images") or 0)
                + len(metrics.get("synthetic_validation") or ()))
        per_unit = took / (fitted * (LOAD_S + FIT_S) + held * SCORE_S)
        return per_unit * (n_train * (LOAD_S + FIT_S) + n_held * SCORE_S), True
    return n_train * (LOAD_S + FIT_S) + n_held * SCORE_S + STARTUP_S, False


def planned_extras(n_train: int, n_held_good: int, n_defect: int, preset: bool
                   ) -> tuple[int, int]:
    """(augmented copies, synthetic defects) the next training will add: copies when a preset
    is marked (the cap of ``fit._write_copies``), synthetic defects when no defect is held out
    (``fit.synthetic_plan``). Both are fitted or scored like real images, so they take time."""
    copies = 0
    if preset and n_train:
        per_shot = min(n_train, max(1, MAX_AUGMENTED // AUGMENTED_COPIES))
        copies = per_shot * AUGMENTED_COPIES if n_train * AUGMENTED_COPIES > MAX_AUGMENTED \
            else n_train * AUGMENTED_COPIES
    chosen, per_image = synthetic_plan(n_held_good) if n_defect == 0 else ([], 0)
    return copies, len(chosen) * per_image


def _duration_words(runs: list[dict[str, Any]], n_train: int, n_held: int,
                    extras: tuple[int, int] = (0, 0)) -> str:
    copies, synthetic = extras
    seconds, measured = expected_duration(runs, n_train + copies, n_held + synthetic)
    source = "from this project's last training" if measured else "an estimate for this machine"
    added = [f"{copies} augmented copies"] * bool(copies) + [
        f"{synthetic} synthetic defects"] * bool(synthetic)
    these = "this good image" if n_train == 1 else f"these {n_train} good images"
    return (f"Training on {these} and checking {count(n_held, 'held-out image')}"
            + (f" (with {' and '.join(added)})" if added else "")
            + f" takes {_seconds_words(seconds)} ({source}).")


def _default_image_size() -> int:
    return int(registry.spec(registry.DEFAULT_MODEL).default_config["image_size"])


def _training_preset_name(ctx: Kensa, name: str) -> str | None:
    with ctx.session(readonly=True) as s:
        preset = repo.training_preset(s, require_project(s, name).id)
        return None if preset is None else preset.name


def augmentation_words(ctx: Kensa, name: str) -> str:
    """One sentence: which augmentation preset a training will use, and how many copies.

    The same preset :func:`services.training.project.augmentation_params` records ("auto").
    Read from the table, not through ``services.augmentation``: that validates configs with
    albumentations, which imports torch, and the page server should not load it for a name.
    """
    preset_name = _training_preset_name(ctx, name)
    if preset_name is None:
        return ("No augmentation preset is marked for training: the model learns from the good "
                "images as they are.")
    n = AUGMENTED_COPIES
    return (f"The augmentation preset “{preset_name}” adds {n} augmented "
            f"cop{'ies' if n != 1 else 'y'} of every good image the model learns from (at "
            f"most {MAX_AUGMENTED} copies in all, from an even spread of the images).")


def model_choices(n_good: int, n_defect: int, comparison: dict[str, Any] | None = None
                  ) -> list[ModelChoice]:
    """Every registered model, ranked: the newest comparison's pick first (measurement
    overrides the table), then the decision table's order (:func:`engine.models.recommend
    .prior`, texture or object left to measurement)."""
    ranked = prior(n_good, n_defect)
    picked = (comparison or {}).get("pick")
    if picked in registry.names():
        ranked.sort(key=lambda item: item[0] != picked)
    out = []
    for model, reason in ranked:
        spec = registry.spec(model)
        measured = model == picked
        out.append(ModelChoice(model, spec.title, spec.description, spec.needs_network,
                               dict(spec.default_config),
                               comparison["reason"] if measured and comparison else reason,
                               measured, slow_without_gpu=spec.slow_without_gpu))
    return out


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
    models = model_choices(n_good_train, n_defect, comparison_result(ctx, name))
    first = models[0]
    runs = list_model_versions(ctx, name)
    has_preset = _training_preset_name(ctx, name) is not None
    n_train = n_good_train - max(0, held_out_needed(n_defect) - (n_good - n_good_train))
    n_held = n_good + n_defect - n_train
    backbones = [
        BackboneChoice(spec.name, spec.description, spec.weights == "hub")
        for spec in REGISTRY.values()
    ]
    return TrainingSetup(
        n_good_train=n_good_train,
        n_good_other=n_good - n_good_train,
        n_defect=n_defect,
        algorithm=first.name,
        title=first.title,
        reasons=(_reasons(n_good_train, n_good - n_good_train, n_defect)
                 if first.name == registry.DEFAULT_MODEL and not first.measured
                 else [("Measured on this project's images. " if first.measured else "")
                       + first.reason]),
        backbones=backbones,
        default_backbone=DEFAULT_BACKBONE,
        default_image_size=_default_image_size(),
        active=active,
        duration=_duration_words(runs, max(1, n_train), n_held, planned_extras(
            max(1, n_train), n_good - n_train, n_defect, has_preset)),
        augmentation=augmentation_words(ctx, name),
        models=models,
    )


def model_params(algorithm: str, *, backbone: str | None = None, image_size: int | None = None,
                 colour: str = "auto", any_angle: bool = False,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters a training of ``algorithm`` records: the page's settings, each only
    when the model has it (Kensa's colour rule means nothing to PaDiM), plus ``params``
    (epochs, batch size, early stopping...). Out-of-range values are refused in words."""
    defaults = registry.spec(algorithm).default_config
    out: dict[str, Any] = {}
    if "backbone" in defaults and backbone is not None:
        if backbone not in REGISTRY:
            raise ValueError(f"unknown backbone {backbone!r}")
        out["backbone"] = backbone
    if "image_size" in defaults and image_size is not None:
        lo, hi = IMAGE_SIZE_RANGE
        if not lo <= image_size <= hi:
            raise ValueError(f"image size must be between {lo} and {hi} pixels")
        out["image_size"] = int(image_size)
    if "colour" in defaults:
        if colour not in COLOUR_CHOICES:
            raise ValueError(f"colour must be one of {', '.join(COLOUR_CHOICES)}, not "
                             f"{colour!r}")
        out["colour"] = colour
    if "views" in defaults:
        out["views"] = "any_angle" if any_angle else "auto"
    for key, value in (params or {}).items():
        if key in TRAINING_RANGES:
            lo, hi = TRAINING_RANGES[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{key.replace('_', ' ')} must be a whole number between "
                                 f"{lo} and {hi}")
        out[key] = value
    return out


def start_training(ctx: Kensa, name: str, *, shots: int | None, seed: int,
                   algorithm: str = registry.DEFAULT_MODEL, params: dict[str, Any] | None = None,
                   backbone: str | None = None, image_size: int | None = None,
                   colour: str = "auto", any_angle: bool = False) -> int:
    """Queue a run of ``algorithm`` and hand it to the job queue; returns at once with the
    model version id. The settings a model does not have are left out (:func:`model_params`).
    """
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be between 0 and {SEED_MAX}")
    # request_training refuses an impossible training with the same one sentence
    model = model_params(algorithm, backbone=backbone, image_size=image_size, colour=colour,
                         any_angle=any_angle, params=params)
    mv_id = request_training(ctx, name, shots, seed, model, algorithm)
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
            summary["started_at"] = job["started_at"] or summary["started_at"]
        summary["eta_s"] = eta_seconds(summary)
        summary["eta"] = eta_words(summary["eta_s"])
        runs.append(summary)
    return runs


def eta_seconds(run: dict[str, Any]) -> float | None:
    """Seconds left, from the rate so far: elapsed x (1 - progress) / progress.

    Honest because training shares its progress bar out in proportion to each step's
    measured time (``services.training.fit``), so the fraction moves evenly in time.
    """
    progress, started = float(run.get("progress") or 0.0), run.get("started_at")
    if run.get("status") != "running" or started is None or progress < ETA_MIN_PROGRESS:
        return None
    elapsed = (utcnow() - started).total_seconds()
    if elapsed < ETA_MIN_ELAPSED_S or progress >= 1.0:
        return None
    return elapsed * (1.0 - progress) / progress


def cancel(ctx: Kensa, model_version_id: int) -> bool:
    return cancel_training(ctx, model_version_id)


def _run_dict(mv: Any) -> dict[str, Any]:
    return {"id": mv.id, "status": mv.status, "stage": mv.stage, "progress": mv.progress,
            "started_at": mv.started_at, "created_at": mv.created_at}


def _run_summary(run: dict[str, Any]) -> dict[str, Any]:
    out = {k: run[k] for k in ("id", "status", "stage", "progress", "started_at", "created_at",
                               "finished_at", "error")}
    out["label"] = model_name(run.get("number"))  # "Model 2": numbered within the project
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


def _settings_words(algorithm: str, backbone: str | None, model: dict[str, Any],
                    params: dict[str, Any], metrics: dict[str, Any]) -> str:
    """A run's settings in one line: the model (when not Kensa's own), backbone, size,
    epochs, seed; each only when the model has it."""
    try:
        spec = registry.spec(algorithm)
        title, defaults = spec.title, {**spec.default_config, **model}
    except ValueError:  # a model this version no longer offers: its recorded name
        title, defaults = algorithm, dict(model)
    parts = [] if algorithm == registry.DEFAULT_MODEL else [title]
    if backbone or "backbone" in defaults:
        parts.append(str(backbone or defaults.get("backbone", DEFAULT_BACKBONE)))
    if "image_size" in defaults:
        parts.append(f"{defaults['image_size']} px")
    if "epochs" in defaults:
        parts.append(f"{defaults['epochs']} epochs")
    parts.append(f"seed {params.get('seed', 0)}")
    return (" · ".join(parts) + (" · colour ignored" if metrics.get("colour_ignored") else "")
            + (" · any angle" if model.get("views") == "any_angle" else ""))


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
            "model": model_name(run.get("number")),
            "status": run["status"],
            "started": run["started_at"] or run["created_at"],
            "took": _duration(run["started_at"], run["finished_at"]),
            "good images learned": str(shots),
            "image AUROC": _metric(metrics, "image_auroc"),
            "AP": _metric(metrics, "image_ap"),
            "F1": _metric(metrics, "image_f1"),
            "pixel AUROC": _metric(metrics, "pixel_auroc"),
            "AUPRO": _metric(metrics, "aupro"),
            "threshold": _metric(threshold if isinstance(threshold, dict) else metrics,
                                 "value" if isinstance(threshold, dict) else "threshold", 4),
            # one column for the settings, so the table fits the page without scrolling
            "settings": _settings_words(run["algorithm"], run["backbone"], model, params,
                                        metrics),
            "note": (run["error"] or "")[:200],
        })
    return rows

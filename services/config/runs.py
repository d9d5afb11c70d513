"""What a validated config makes happen: a file training, or a project training queued as a job.

Two readers of the same config, so that a key means one thing everywhere:

* :func:`file_run_plan` -> :func:`run_file_training` (``advanced-train``, ``multi-task-train``):
  ``services.training.fit.train_model`` on a dataset folder with the model, its parameters,
  augmentation copies from inline transforms and the threshold rule of ``post_processing``;
  written as a run folder by ``services.training.runs.save_run`` (what ``score --run`` reads);
* :func:`project_run_plan` -> :func:`queue_project_training` (``train-all``): the Training
  page's own path, ``request_training`` + ``start_training_job``.

A key one reader cannot honour is refused by that reader with the key's file and name (a
project run has no inline transforms and sets its threshold automatically), never ignored:
the config a person wrote is the run they get, or they are told why not. Reading is plain
``values[...]`` access on purpose: the test that finds dead keys watches those reads.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from engine import thresholds
from services.config.schema import Config, ConfigError

ProgressFn = Callable[[str, float], None]
#: The effective config, written next to a file run's model for the record.
CONFIG_FILE = "config.yaml"
#: Where a file run keeps the augmented copies it learned from (provenance points at them).
AUGMENTED_DIR = "augmented"


@dataclass(frozen=True)
class ThresholdRule:
    """``post_processing.threshold``: a method of ``engine.thresholds`` and its parameter."""

    method: str
    k: float
    q: float
    value: float | None


@dataclass(frozen=True)
class FileRunPlan:
    """Everything ``train_model`` and ``save_run`` get from a config."""

    data: Path
    layout: str
    shots: int | None
    seed: int
    algorithm: str
    params: dict[str, Any]
    #: ``train_model``'s ``augmentation`` record (preset, copies, config), or None
    augmentation: dict[str, Any] | None
    threshold: ThresholdRule


@dataclass(frozen=True)
class ProjectRunPlan:
    """Everything ``request_training`` gets from a config, and a folder to import first."""

    algorithm: str
    params: dict[str, Any]
    shots: int | None
    seed: int
    #: ``request_training``'s ``augmentation``: "auto", None (no copies) or a preset name
    augmentation: str | None
    data: Path | None
    layout: str


def _model(values: Any) -> tuple[str, dict[str, Any]]:
    model = values["model"]
    params = model["params"]
    return model["name"], {key: params[key] for key in params}


def _threshold(values: Any) -> ThresholdRule:
    rule = values["post_processing"]["threshold"]
    value = rule["value"]
    return ThresholdRule(rule["method"], float(rule["k"]), float(rule["q"]),
                         None if value is None else float(value))


def file_run_plan(config: Config) -> FileRunPlan:
    """The file training a config describes; ConfigError for what a file run cannot do."""
    values = config.values
    data, augmentation = values["data"], values["augmentation"]
    problems = []
    if data["path"] is None:
        problems.append(f"{config.where('data.path')}: no dataset folder; give --data DIR or "
                        "set data.path")
    preset = augmentation["preset"]
    if preset not in ("auto", "none"):
        problems.append(f"{config.where('augmentation.preset')}: file runs have no presets "
                        f"({preset!r} lives in a project); list the steps under "
                        "augmentation.transforms, or use train-all on the project")
    if problems:
        raise ConfigError(problems)
    algorithm, params = _model(values)
    transforms = augmentation["transforms"]
    copies, aug_seed = augmentation["copies"], augmentation["seed"]
    record = None
    if transforms:
        record = {"preset": "config file", "copies": int(copies),
                  "config": {"version": 1, "seed": int(aug_seed), "transforms": transforms}}
    return FileRunPlan(Path(data["path"]), data["layout"], data["shots"], int(data["seed"]),
                       algorithm, params, record, _threshold(values))


def project_run_plan(config: Config) -> ProjectRunPlan:
    """The project training a config describes; ConfigError for keys a project run cannot
    honour (it would otherwise train something else than the file says)."""
    values = config.values
    data, augmentation = values["data"], values["augmentation"]
    problems = []
    if augmentation["transforms"]:
        problems.append(f"{config.where('augmentation.transforms')}: project runs take their "
                        "augmentation from a project preset (augmentation.preset); save these "
                        "steps as a preset on the Augmentation page, or train the folder with "
                        "advanced-train")
    method = _threshold(values).method
    if method != "auto":
        problems.append(f"{config.where('post_processing.threshold.method')}: project runs "
                        f"set the threshold automatically, not {method!r}; change it after "
                        "training with `threshold set`")
    if problems:
        raise ConfigError(problems)
    algorithm, params = _model(values)
    preset = augmentation["preset"]
    choice = None if preset == "none" else preset
    path = data["path"]
    return ProjectRunPlan(algorithm, params, data["shots"], int(data["seed"]), choice,
                          None if path is None else Path(path), data["layout"])


# --------------------------------------------------------------------------- file runs


def apply_threshold(outcome: Any, rule: ThresholdRule) -> Any:
    """``outcome`` (a ``TrainOutcome``) with the threshold ``rule`` asks for, set on the
    held-out images training scored; "auto" keeps training's own. Also records F1, precision
    and recall AT that threshold in the metrics (the image metrics of training are
    threshold-free: AUROC, AP, best F1)."""
    from services.training.fit import TrainingInputError

    validation = outcome.validation
    labels = np.asarray(validation.labels)
    scores = np.asarray(validation.scores, dtype=np.float64)
    real = np.asarray([i not in validation.synthetic for i in range(labels.size)], dtype=bool)
    goods = scores[(labels == 0) & real]
    if rule.method == "auto":
        result = outcome.threshold
    elif rule.method == "f1_optimal":
        keep = real
        if not (labels[keep] == 1).any() or not (labels[keep] == 0).any():
            raise TrainingInputError(
                "post_processing.threshold.method f1_optimal needs defect images held out and "
                "this dataset has none beside the shots; use auto (synthetic defects) or "
                "mean_k_sigma")
        result = thresholds.f1_optimal_with_margin(scores[keep], labels[keep])
    elif rule.method == "mean_k_sigma":
        result = thresholds.mean_k_sigma(goods, k=rule.k)
    elif rule.method == "percentile":
        result = thresholds.percentile(goods, q=rule.q)
    elif rule.method == "manual" and rule.value is not None:
        result = thresholds.manual(rule.value)
    else:
        raise ValueError(f"unknown threshold method {rule.method!r}")
    metrics = dict(outcome.metrics)
    metrics.update(_at_threshold(scores, labels, float(result.value)))
    return dataclasses.replace(outcome, threshold=result, metrics=metrics)


def _at_threshold(scores: np.ndarray, labels: np.ndarray, value: float) -> dict[str, float]:
    """F1, precision and recall of the verdicts ``score >= value`` (empty without defects)."""
    if not (labels == 1).any():
        return {}
    flagged = scores >= value
    tp = float(np.sum(flagged & (labels == 1)))
    precision = tp / max(1.0, float(flagged.sum()))
    recall = tp / float((labels == 1).sum())
    f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    return {"f1_at_threshold": f1, "precision_at_threshold": precision,
            "recall_at_threshold": recall}


@dataclass
class FileRunResult:
    """A finished file run: the outcome, the files written, what was skipped and how long."""

    out: Path
    plan: FileRunPlan
    outcome: Any
    digests: dict[str, str]
    images: int
    seconds: float
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON of the run (what the CLI prints with ``--json``)."""
        o = self.outcome
        return {
            "run": str(self.out), "data": str(self.plan.data), "algorithm": o.algorithm,
            "params": o.params, "images": self.images, "shots": len(o.shots),
            "bank_size": o.fit.bank_size, "fit_s": round(o.fit.fit_seconds, 2),
            "seconds": round(self.seconds, 2),
            "threshold": {"method": o.threshold.method, "value": float(o.threshold.value),
                          "params": o.threshold.params},
            "validation_images": len(o.validation.paths) - len(o.validation.synthetic),
            "metrics": o.metrics,
            "metrics_on": ("synthetic" if o.validation.synthetic
                           else "held-out" if "image_auroc" in o.metrics else None),
            "augmentation": o.augmentation, "artifacts": self.digests,
            "problems": self.problems,
        }


def run_file_training(config: Config, out_dir: str | Path,
                      progress: ProgressFn | None = None) -> FileRunResult:
    """Train the dataset folder ``config`` names and write the run folder ``out_dir``
    (``run.json``, the model's files, ``threshold.json``, ``config.yaml``)."""
    from engine.data import DatasetError, discover
    from services.training.fit import train_model
    from services.training.runs import save_run

    plan = file_run_plan(config)
    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    index = discover(plan.data)
    if plan.layout != "auto" and index.layout != plan.layout:
        raise DatasetError(f"{plan.data}: {config.where('data.layout')} is {plan.layout} but "
                           f"the folder has the {index.layout} layout")
    outcome = train_model(index, shots=plan.shots, seed=plan.seed, algorithm=plan.algorithm,
                          params=plan.params, progress=progress,
                          augmentation=plan.augmentation,
                          augmented_dir=out / AUGMENTED_DIR if plan.augmentation else None)
    outcome = apply_threshold(outcome, plan.threshold)
    digests = save_run(outcome, out, plan.data, plan.shots, plan.seed)
    (out / CONFIG_FILE).write_text(
        "# the effective configuration of this run (defaults merged with the given file)\n"
        + yaml.safe_dump(config.values, sort_keys=False), encoding="utf-8")
    problems = [f"{p.path}: {p.message}" for p in index.problems] + list(outcome.skipped)
    return FileRunResult(out, plan, outcome, digests, len(index.records),
                         time.perf_counter() - started, problems)


# --------------------------------------------------------------------------- project runs


def import_folder(ctx: Any, project: str, plan: ProjectRunPlan,
                  echo: ProgressFn | None = None) -> dict[str, Any]:
    """Import ``plan.data`` into ``project`` (created if new, new images only if not) as an
    ``import`` job run here, like ``project create``; the layout is checked first."""
    from engine.data import DatasetError, discover
    from services.jobs.api import submit_inline

    assert plan.data is not None
    if plan.layout != "auto":
        layout = discover(plan.data, validate=False).layout
        if layout != plan.layout:
            raise DatasetError(f"{plan.data}: data.layout is {plan.layout} but the folder has "
                               f"the {layout} layout")
    _, report = submit_inline(ctx, "import", {"name": project, "index": str(plan.data)},
                              echo=echo)
    return report


def queue_project_training(ctx: Any, project: str, plan: ProjectRunPlan) -> dict[str, Any]:
    """Queue a training of ``project`` the way the Training page does; returns
    ``{"project", "model_version_id", "job_id"}`` (refusals are raised, in words)."""
    from services.training.project import request_training, start_training_job

    mv_id = request_training(ctx, project, plan.shots, plan.seed, plan.params,
                             plan.algorithm, plan.augmentation)
    return {"project": project, "model_version_id": mv_id,
            "job_id": start_training_job(ctx, mv_id)}

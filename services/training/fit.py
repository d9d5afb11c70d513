"""Train use case: pick the shots, fit the detector, choose a threshold on held-out images.

Shared by the file-based CLI (``train --data --out``) and the project flow (database rows), so
both get the same split, the same threshold rule and the same artifacts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import thresholds
from engine.data import (
    DatasetIndex,
    ImageLoadError,
    ImageRecord,
    degenerate_reason,
    load_image,
    load_mask,
    sha256_file,
)
from engine.imaging import shrink_labels_to_fit, shrink_to_fit
from engine.metrics import image_metrics, pixel_metrics
from engine.models import AnomalyModel, FitReport, ImageSource, ProgressFn, registry

#: Returns True when the user asked to stop; checked between images.
CancelFn = Callable[[], bool]

#: Held-out images scored to choose the threshold; beyond this a seeded stratified sample.
MAX_VALIDATION = 300


class TrainingCancelled(RuntimeError):
    """The user pressed Cancel; nothing was written."""


class TrainingInputError(ValueError):
    """The data cannot train a model (the message says what to add)."""


#: Validation maps are kept at most this long on their longer side (memory, heatmaps, metrics).
MAP_LONG_SIDE = 256


@dataclass
class Validation:
    """Scores of the held-out images used for the threshold (label 1 = defect).

    ``maps[i]`` is image i's anomaly map shrunk to at most MAP_LONG_SIDE, ``masks[i]`` its
    ground-truth mask at the same size (None for good images and defects without a mask).
    """

    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)

    @property
    def normal_scores(self) -> np.ndarray:
        return self.scores[self.labels == 0]


@dataclass
class TrainOutcome:
    model: AnomalyModel
    algorithm: str
    params: dict[str, Any]
    shots: list[str]
    fit: FitReport
    validation: Validation
    threshold: thresholds.ThresholdResult
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: one per training image, in fit order: what the model's provenance records name
    sources: list[ImageSource] = field(default_factory=list)


def split_records(index: DatasetIndex, shots: int | None, seed: int
                  ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``shots`` seeded good training images, and every other labelled image for validation."""
    goods = sorted(index.select(split="train", label="good") or
                   [r for r in index.select(label="good") if r.split == "all"],
                   key=lambda r: str(r.path))
    if not goods:
        raise TrainingInputError(f"{index.root}: no good images to train on")
    if shots is None:
        chosen = goods
    elif not 1 <= shots <= len(goods):
        raise TrainingInputError(
            f"{index.root}: asked for {shots} shots; choose 1 to {len(goods)} good images"
        )
    else:
        picks = np.random.default_rng(seed).choice(len(goods), size=shots, replace=False)
        chosen = [goods[i] for i in sorted(picks)]
    taken = {r.path for r in chosen}
    held_out = [r for r in index.records if r.path not in taken]
    if len(held_out) > MAX_VALIDATION:
        rng = random.Random(seed)
        by_label = {lab: [r for r in held_out if r.label == lab] for lab in ("good", "defect")}
        held_out = [
            r
            for group in by_label.values()
            for r in rng.sample(group, round(MAX_VALIDATION * len(group) / len(held_out)))
        ]
    return chosen, sorted(held_out, key=lambda r: str(r.path))


def _load_all(records: Sequence[ImageRecord], skipped: list[str], *, shots: bool = False
              ) -> list[tuple[ImageRecord, np.ndarray]]:
    """Images that decode; with ``shots``, also only those fit to teach the model "good".

    A flat or tiny shot would make blank frames look normal, so it is skipped by name even when
    it was indexed before that check existed.
    """
    out = []
    for record in records:
        try:
            image = load_image(record.path)
        except ImageLoadError as exc:
            skipped.append(str(exc))
            continue
        reason = degenerate_reason(image) if shots else None
        if reason:
            skipped.append(f"{record.path}: {reason}")
            continue
        out.append((record, image))
    return out


def choose_threshold(validation: Validation) -> tuple[thresholds.ThresholdResult, dict]:
    """F1-optimal when defects were held out, else mean + 3 sigma of the good scores."""
    labels = validation.labels
    if labels.size and labels.min() == 0 and labels.max() == 1:
        return (thresholds.f1_optimal(validation.scores, labels),
                image_metrics(validation.scores, labels))
    if (labels == 0).sum() >= 2:
        return thresholds.mean_k_sigma(validation.normal_scores, k=3.0), {}
    raise TrainingInputError(
        "no held-out images to choose a threshold: add at least two more good images "
        "(or some defect images) beyond the training shots"
    )


def train_model(
    index: DatasetIndex,
    shots: int | None = None,
    seed: int = 0,
    algorithm: str = registry.DEFAULT_MODEL,
    params: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    cancelled: CancelFn | None = None,
    device: str | None = None,
) -> TrainOutcome:
    """Fit on the chosen shots and score the held-out images; writes nothing."""
    params = dict(params or {})
    if "seed" in registry.spec(algorithm).default_config:
        params.setdefault("seed", seed)
    report = progress or (lambda stage, fraction: None)
    stop = cancelled or (lambda: False)
    train_records, held_out = split_records(index, shots, seed)
    skipped: list[str] = []
    report("loading images", 0.0)
    train = _load_all(train_records, skipped, shots=True)
    if not train:
        raise TrainingInputError(f"{index.root}: none of the training images could be read")
    if stop():
        raise TrainingCancelled("training cancelled before fitting")
    model = registry.create(algorithm, device=device, **params)
    sources = [ImageSource(str(r.path), sha256_file(r.path)) for r, _ in train]

    def fit_progress(stage: str, fraction: float) -> None:
        if stop():
            raise TrainingCancelled(f"training cancelled while {stage}")
        report(stage, 0.05 + 0.6 * fraction)

    fit = model.fit([image for _, image in train], progress=fit_progress, sources=sources)
    paths, labels, scores, maps, masks = [], [], [], [], []
    for i, record in enumerate(held_out):
        if stop():
            raise TrainingCancelled("training cancelled while validating")
        try:
            image = load_image(record.path)
            mask = load_mask(record.mask_path, image.shape[:2]) if record.mask_path else None
        except ImageLoadError as exc:
            skipped.append(str(exc))
            continue
        result = model.score([image])
        scores.append(float(result.scores[0]))
        labels.append(int(record.label == "defect"))
        paths.append(str(record.path))
        maps.append(shrink_to_fit(result.maps[0], MAP_LONG_SIDE))
        masks.append(None if mask is None
                     else shrink_labels_to_fit(mask.astype(np.uint8), MAP_LONG_SIDE) > 0)
        report("scoring validation images", 0.65 + 0.33 * (i + 1) / max(1, len(held_out)))
    validation = Validation(paths, np.asarray(labels, dtype=np.int64),
                            np.asarray(scores, dtype=np.float64), maps, masks)
    threshold, metrics = choose_threshold(validation)
    metrics.update(validation_pixel_metrics(validation))
    report("done", 1.0)
    return TrainOutcome(model, algorithm, params, [str(r.path) for r, _ in train], fit,
                        validation, threshold, {k: float(v) for k, v in metrics.items()}, skipped,
                        sources)


def validation_pixel_metrics(validation: Validation) -> dict[str, float]:
    """Pixel AUROC and AUPRO over held-out images whose masks are known (goods count as clean).

    Defect images without a mask are left out: their defect pixels would count as background.
    """
    keep = [i for i, lab in enumerate(validation.labels)
            if lab == 0 or validation.masks[i] is not None]
    if not any(validation.masks[i] is not None and validation.masks[i].any() for i in keep):
        return {}
    out = pixel_metrics([validation.maps[i] for i in keep], [validation.masks[i] for i in keep])
    return {"pixel_auroc": float(out["pixel_auroc"]), "aupro": float(out["aupro"])}


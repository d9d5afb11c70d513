"""Train use case: pick the shots, fit the detector, choose a threshold on held-out images.

Shared by the file-based CLI (``train --data --out``) and the project flow (database rows), so
both get the same split, the same threshold rule and the same artifacts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import thresholds
from engine.data import (
    DatasetIndex,
    ImageLoadError,
    ImageRecord,
    degenerate_reason,
    load_image_and_sha256,
    load_mask,
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


#: Seconds per image of each step at default settings (2-core dev box, bench/train_scale.py):
#: they share out the progress bar so that it moves evenly in time, which is what makes the
#: page's time estimate (elapsed time scaled by the fraction left) honest.
LOAD_S, FIT_S, SCORE_S = 0.06, 0.18, 0.2  # 200 x 1024 px, 12 held out: 52 s in all
#: Seconds before the first image: a worker builds the model (imports, backbone weights).
STARTUP_S = 5.0
#: Training images read between two progress reports (and Cancel checks), and the threads
#: that decode and hash them (PNG/JPEG decoding and hashing release the GIL).
LOAD_BATCH, LOAD_THREADS = 8, 2


def held_out_needed(n_defect: int) -> int:
    """Held-out good images the threshold needs: F1 needs one beside the held-out defects,
    mean + 3 sigma (no defects) needs two for a spread (see :func:`choose_threshold`)."""
    return 1 if n_defect else 2


def _more(n: int, what: str) -> str:
    return f"{n} more {what}{'s' if n != 1 else ''}"


def training_shortfall(n_candidates: int, n_good_other: int, n_defect: int,
                       shots: int | None = None) -> str | None:
    """One plain sentence saying what to add (or change) before a training can run; None if
    it can. The same rule as :func:`split_records` and :func:`choose_threshold`, so the page,
    the CLI and the service refuse exactly what would fail minutes later in a worker.

    ``n_candidates``: good images training may learn from (train split); ``n_good_other``:
    good images always held out (test/val); ``n_defect``: defect images (always held out).
    """
    need = held_out_needed(n_defect)
    total = n_candidates + n_good_other
    if n_candidates == 0 and n_good_other:
        return ("Add good images to learn from: the good images in the test folder are kept "
                "aside to check the model.")
    if shots is None:
        if total >= 1 + need:
            return None
        if n_defect:
            return f"Add {_more(1 + need - total, 'good image')} so one can be kept aside."
        if total == 0:
            return "Add at least 3 good images, or 2 good images and a few defect images."
        if total == 1:
            return "Add 2 more good images, or 1 more good image and a few defect images."
        return "Add 1 more good image or a few defect images."
    if not 1 <= shots <= n_candidates:
        return f"Choose between 1 and {n_candidates} good images to learn from."
    if n_good_other + n_candidates - shots >= need:
        return None
    limit = n_candidates - max(0, need - n_good_other)
    if limit >= 1:
        return (f"Learn from at most {limit} good image{'s' if limit != 1 else ''}, so that "
                f"{need} stay aside to set the threshold.")
    return training_shortfall(n_candidates, n_good_other, n_defect, None)


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
    """``shots`` seeded good training images, and every other labelled image for validation.

    ``shots=None`` ("all") keeps back, seeded, the few good images the threshold needs when no
    other held-out images provide them, so that "all" works from 3 good images (or 2 and some
    defects) instead of failing after the fit. What cannot work is refused here, before any
    image is read, with :func:`training_shortfall`'s sentence.
    """
    goods = sorted(index.select(split="train", label="good") or
                   [r for r in index.select(label="good") if r.split == "all"],
                   key=lambda r: str(r.path))
    candidates = {r.path for r in goods}
    n_good_other = sum(1 for r in index.records if r.label == "good" and r.path not in candidates)
    n_defect = sum(1 for r in index.records if r.label == "defect")
    problem = training_shortfall(len(goods), n_good_other, n_defect, shots)
    if problem:
        raise TrainingInputError(problem)
    if shots is None:
        shots = len(goods) - max(0, held_out_needed(n_defect) - n_good_other)
    if shots == len(goods):
        chosen = goods
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


def changed_reason(path: object, recorded: str | None, actual: str) -> str | None:
    """Why a file whose bytes no longer match the sha256 recorded at import is refused."""
    if recorded is None or recorded == actual:
        return None
    return (f"{path}: changed on disk since it was imported (sha256 {recorded[:12]}… then, "
            f"{actual[:12]}… now); re-scan the project to use the new version")


def _load_one(record: ImageRecord, expected: Mapping[str, str] | None, skipped: list[str]
              ) -> tuple[np.ndarray, str] | None:
    """The image and the sha256 of the very bytes decoded, or None (reason in ``skipped``).

    With ``expected`` (path -> sha256 recorded at import), a file rewritten since is refused:
    training on new bytes while the history names the old digest would make it lie.
    """
    try:
        image, digest = load_image_and_sha256(record.path)
    except ImageLoadError as exc:
        skipped.append(str(exc))
        return None
    reason = changed_reason(record.path, (expected or {}).get(str(record.path)), digest)
    if reason:
        skipped.append(reason)
        return None
    return image, digest


def _load_all(records: Sequence[ImageRecord], skipped: list[str], *, shots: bool = False,
              expected: Mapping[str, str] | None = None
              ) -> list[tuple[ImageRecord, np.ndarray, str]]:
    """(record, image, sha256) of images that decode (and still match ``expected``); with
    ``shots``, also only those fit to teach the model "good".

    A flat or tiny shot would make blank frames look normal, so it is skipped by name even when
    it was indexed before that check existed.
    """
    out = []
    for record in records:
        loaded = _load_one(record, expected, skipped)
        if loaded is None:
            continue
        image, digest = loaded
        reason = degenerate_reason(image) if shots else None
        if reason:
            skipped.append(f"{record.path}: {reason}")
            continue
        out.append((record, image, digest))
    return out


def choose_threshold(validation: Validation) -> tuple[thresholds.ThresholdResult, dict]:
    """F1-optimal (mid-plateau, for a margin) when defects were held out, else mean + 3 sigma
    of the good scores."""
    labels = validation.labels
    if labels.size and labels.min() == 0 and labels.max() == 1:
        return (thresholds.f1_optimal_with_margin(validation.scores, labels),
                image_metrics(validation.scores, labels))
    if (labels == 0).sum() >= 2:
        return thresholds.mean_k_sigma(validation.normal_scores, k=3.0), {}
    raise TrainingInputError(
        "no held-out images to choose a threshold: add at least two more good images "
        "(or some defect images) beyond the training shots"
    )


def _start_model(algorithm: str, device: str | None, params: dict[str, Any]
                 ) -> Future[AnomalyModel]:
    """Build the model on a helper thread while the images are read.

    The first build in a process takes seconds (imports, backbone weights) with nothing to
    report; image decoding releases the GIL, so both go on together and progress keeps moving.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kensa-model")
    try:
        return pool.submit(registry.create, algorithm, device=device, **params)
    finally:
        pool.shutdown(wait=False)


def _wait_for_model(future: Future[AnomalyModel], report: ProgressFn, stop: CancelFn,
                    at: float) -> AnomalyModel:
    """The model once built; reports (and checks Cancel) twice a second while waiting."""
    while True:
        try:
            return future.result(timeout=0.5)
        except FutureTimeout:
            if stop():
                raise TrainingCancelled("training cancelled while loading the model") from None
            report("loading the model", at)


def train_model(
    index: DatasetIndex,
    shots: int | None = None,
    seed: int = 0,
    algorithm: str = registry.DEFAULT_MODEL,
    params: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    cancelled: CancelFn | None = None,
    device: str | None = None,
    expected_sha256: Mapping[str, str] | None = None,
) -> TrainOutcome:
    """Fit on the chosen shots and score the held-out images; writes nothing.

    ``expected_sha256`` (path -> sha256 recorded at import; projects pass it) refuses, by
    name, any file whose bytes changed since: every image is hashed from the bytes decoded.
    """
    params = dict(params or {})
    if "seed" in registry.spec(algorithm).default_config:
        params.setdefault("seed", seed)
    report = progress or (lambda stage, fraction: None)
    stop = cancelled or (lambda: False)
    train_records, held_out = split_records(index, shots, seed)
    skipped: list[str] = []
    n_held = len(held_out)
    cost = LOAD_S * len(train_records) + FIT_S * len(train_records) + SCORE_S * n_held
    loaded_at = LOAD_S * len(train_records) / cost
    fitted_at = loaded_at + FIT_S * len(train_records) / cost
    creating = _start_model(algorithm, device, params)  # overlaps reading the images
    report("loading images", 0.0)
    train: list[tuple[ImageRecord, np.ndarray, str]] = []
    with ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="kensa-load") as pool:
        for start in range(0, len(train_records), LOAD_BATCH):  # hundreds of images: seconds
            if stop():
                raise TrainingCancelled("training cancelled while loading images")
            batch = train_records[start:start + LOAD_BATCH]
            for loaded in pool.map(lambda r: _load_all([r], skipped, shots=True,
                                                       expected=expected_sha256), batch):
                train += loaded  # in record order; decoding releases the GIL
            report("loading images",
                   loaded_at * min(1.0, (start + LOAD_BATCH) / len(train_records)))
    if not train:  # say why (unreadable, degenerate, changed since import), first file
        raise TrainingInputError(f"{index.root}: none of the training images could be read "
                                 "and used" + (f" ({skipped[0]})" if skipped else ""))
    if stop():
        raise TrainingCancelled("training cancelled before fitting")
    model = _wait_for_model(creating, report, stop, loaded_at)
    sources = [ImageSource(str(r.path), digest) for r, _, digest in train]

    def fit_progress(stage: str, fraction: float) -> None:
        if stop():
            raise TrainingCancelled(f"training cancelled while {stage}")
        if stage != "done":  # a model's own "done" is not the end of the training
            report(stage, loaded_at + (fitted_at - loaded_at) * fraction)

    fit = model.fit([image for _, image, _ in train], progress=fit_progress, sources=sources)
    paths, labels, scores, maps, masks = [], [], [], [], []
    for i, record in enumerate(held_out):
        if stop():
            raise TrainingCancelled("training cancelled while validating")
        loaded = _load_one(record, expected_sha256, skipped)
        if loaded is None:
            continue
        image = loaded[0]
        try:
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
        report("scoring validation images",
               fitted_at + (0.99 - fitted_at) * (i + 1) / max(1, n_held))
    validation = Validation(paths, np.asarray(labels, dtype=np.int64),
                            np.asarray(scores, dtype=np.float64), maps, masks)
    report("choosing the threshold", 0.99)
    threshold, metrics = choose_threshold(validation)
    metrics.update(validation_pixel_metrics(validation))
    return TrainOutcome(model, algorithm, params, [str(r.path) for r, _, _ in train], fit,
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


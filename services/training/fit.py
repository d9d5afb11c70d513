"""Train use case: pick the shots, fit the detector, choose a threshold on held-out images.

Shared by the file-based CLI (``train --data --out``) and the project flow (database rows), so
both get the same split, the same threshold rule and the same artifacts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import thresholds
from engine.artifacts import write_bytes_atomic
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
from engine.models.base import sha256_bytes

if TYPE_CHECKING:
    from engine.augment import AugmentConfig

#: Returns True when the user asked to stop; checked between images.
CancelFn = Callable[[], bool]

#: Held-out images scored to choose the threshold; beyond this a seeded stratified sample.
MAX_VALIDATION = 300
#: held-out goods read before the fit for the colour decision (a hue histogram each)
COLOUR_EVIDENCE = 16


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
#: Augmented copies per good shot when the project marks a preset for training (each one costs
#: a fit like a shot; the lead sets the number from bench measurements).
AUGMENTED_COPIES = 2
#: At most this many augmented copies in one training: copies stand in for shots a project
#: lacks, so beyond a few dozen shots they add fit time and memory (each 1024-px copy is 3 MB
#: held until the fit ends) for little; the copies then come from an even spread of the shots.
MAX_AUGMENTED = 64
#: Synthetic defects painted to set a threshold without held-out defects: at least
#: SYNTHETIC_MIN (a few held-out goods get several each, so the F1 plateau rests on more than
#: two defect scores), painted into at most SYNTHETIC_MAX goods (each is scored: SCORE_S apiece).
SYNTHETIC_MIN, SYNTHETIC_MAX = 12, 48
#: Training images read between two progress reports (and Cancel checks), and the threads
#: that decode and hash them (PNG/JPEG decoding and hashing release the GIL).
LOAD_BATCH, LOAD_THREADS = 8, 2


def held_out_needed(n_defect: int) -> int:
    """Held-out good images the threshold needs: F1 needs one beside the held-out defects;
    without defects two (synthetic defects are painted into them, and mean + 3 sigma, the
    fallback for flat images, needs two for a spread; see :func:`choose_threshold`)."""
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


@dataclass(frozen=True)
class SyntheticEntry:
    """A synthetic defect painted into a held-out good image, kept as lossless PNG bytes.

    The bytes are what was scored (PNG decodes to the same pixels), so whoever writes them
    (a project run, under its model folder) records a sha256 that names the scored image.
    """

    name: str  # file name to write it under, e.g. "003_scar_good_007.png"
    kind: str  # "perlin", "cutpaste" or "scar"
    source: str  # path of the held-out good image it was painted into
    png: bytes
    mask_png: bytes
    height: int
    width: int

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.png)

    @property
    def mask_name(self) -> str:
        return self.name.removesuffix(".png") + "_mask.png"


@dataclass
class Validation:
    """Scores of the held-out images used for the threshold (label 1 = defect).

    ``maps[i]`` is image i's anomaly map shrunk to at most MAP_LONG_SIDE, ``masks[i]`` its
    ground-truth mask at the same size (None for good images and defects without a mask).
    ``synthetic[i]`` marks entry i as a synthetic defect (no defect images were held out);
    its ``paths[i]`` is then the entry's file name, not an existing file.
    """

    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    synthetic: dict[int, SyntheticEntry] = field(default_factory=dict)

    @property
    def normal_scores(self) -> np.ndarray:
        return self.scores[self.labels == 0]


class _Scorer:
    """Scores held-out images one by one into the lists a :class:`Validation` is made of."""

    def __init__(self, model: AnomalyModel) -> None:
        self.model = model
        self.paths: list[str] = []
        self.labels: list[int] = []
        self.scores: list[float] = []
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray | None] = []
        self.synthetic: dict[int, SyntheticEntry] = {}

    def add(self, path: str, image: np.ndarray, label: int, mask: np.ndarray | None = None,
            synthetic: SyntheticEntry | None = None) -> None:
        result = self.model.score([image])
        if synthetic is not None:
            self.synthetic[len(self.paths)] = synthetic
        self.scores.append(float(result.scores[0]))
        self.labels.append(int(label))
        self.paths.append(path)
        self.maps.append(shrink_to_fit(result.maps[0], MAP_LONG_SIDE))
        self.masks.append(None if mask is None
                          else shrink_labels_to_fit(mask.astype(np.uint8), MAP_LONG_SIDE) > 0)

    def paint(self, source: str, image: np.ndarray, seed: int, per_image: int, first: int
              ) -> None:
        """Score ``per_image`` synthetic defects painted into the good ``image`` (entries
        ``first...`` of :func:`synthetic_defect_set`); flat images yield none."""
        # imported here: the defect recipes pull in albumentations and anomalib (seconds),
        # which pages that only import this module for its constants should not pay for
        from engine.augment.calibration import png_bytes, synthetic_defect_set

        stem = Path(source).stem
        for k, (defect, kind) in enumerate(synthetic_defect_set([image], seed, per_image,
                                                                first=first)):
            if not defect.mask.any():  # nothing could be painted: no defect to learn from
                continue
            entry = SyntheticEntry(f"{first + k:03d}_{kind}_{stem}.png", kind, source,
                                   png_bytes(defect.image), png_bytes(defect.mask),
                                   *defect.image.shape[:2])
            self.add(entry.name, defect.image, 1, defect.mask, entry)

    def validation(self) -> Validation:
        return Validation(self.paths, np.asarray(self.labels, dtype=np.int64),
                          np.asarray(self.scores, dtype=np.float64), self.maps, self.masks,
                          self.synthetic)


def synthetic_plan(n_goods: int) -> tuple[list[int], int]:
    """Which held-out goods (indices, evenly spread) get synthetic defects, and how many each.

    At most SYNTHETIC_MAX goods, each painted often enough for SYNTHETIC_MIN defects in all.
    """
    if n_goods < 1:
        return [], 0
    chosen = sorted({int(i) for i in np.linspace(0, n_goods - 1, min(n_goods, SYNTHETIC_MAX))
                     .round()})
    return chosen, max(1, math.ceil(SYNTHETIC_MIN / len(chosen)))


def synthetic_threshold(model: AnomalyModel, goods: Sequence[np.ndarray], seed: int = 0,
                        ) -> tuple[thresholds.ThresholdResult, Validation]:
    """The threshold a training without held-out defects sets, from a fitted model and
    held-out good images alone (no database, no files): the goods are scored, synthetic
    defects are painted into them (:func:`synthetic_plan`) and scored, and
    :func:`choose_threshold` places the threshold (``synthetic_f1``, or ``mean_k_sigma`` when
    nothing could be painted). Also returns the scored validation set.
    """
    scorer = _Scorer(model)
    chosen, per_image = synthetic_plan(len(goods))
    painted = dict(zip(chosen, range(0, len(chosen) * per_image, per_image), strict=True))
    for i, image in enumerate(goods):
        name = f"good_{i:03d}"
        scorer.add(name, image, 0)
        if i in painted:
            scorer.paint(name, image, seed, per_image, painted[i])
    validation = scorer.validation()
    return choose_threshold(validation)[0], validation


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
    #: (augmented copies after the shots, ``augmented=True``)
    sources: list[ImageSource] = field(default_factory=list)
    #: ``{"preset", "copies", "augmented_images"}`` when a preset added copies, else None
    augmentation: dict[str, Any] | None = None


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


def colour_evidence(model: AnomalyModel, goods_held: Sequence[ImageRecord],
                    expected: Mapping[str, str] | None) -> dict[str, list[np.ndarray]]:
    """``fit`` keyword arguments for Kensa's colour decision (``colour="auto"``): at most
    ``COLOUR_EVIDENCE`` held-out good images as ``colour_evidence``; ``{}`` for every other
    model and setting (their ``fit`` takes no such argument).

    The Training page promises to "decide from the good images": all of them, not only the
    shots that go into the bank. A file that cannot be read is left out here and named by the
    validation that reads it again.
    """
    from engine.models.fewshot import FewShotPatchCore  # torch: not at import (pages)

    if not isinstance(model, FewShotPatchCore) or model.config.colour != "auto":
        return {}
    loaded = (_load_one(record, expected, []) for record in goods_held[:COLOUR_EVIDENCE])
    images = [item[0] for item in loaded if item is not None]
    return {"colour_evidence": images} if images else {}


def load_held_out(record: ImageRecord, expected: Mapping[str, str] | None, skipped: list[str]
                  ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A held-out image and its mask (None without one), or None with the reason in
    ``skipped``: what training's validation and a model comparison score alike."""
    loaded = _load_one(record, expected, skipped)
    if loaded is None:
        return None
    image = loaded[0]
    try:
        mask = load_mask(record.mask_path, image.shape[:2]) if record.mask_path else None
    except ImageLoadError as exc:
        skipped.append(str(exc))
        return None
    return image, mask


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


#: Why a run without defects fell back to mean + 3 sigma (``params["why"]``).
FALLBACK_WHY = ("no defect image was held out and no synthetic defect could be painted into "
                "the held-out good images (they are flat)")


def _synthetic_f1(validation: Validation) -> thresholds.ThresholdResult:
    """F1 (mid-plateau) on held-out goods against synthetic defects, goods weighted to match.

    How many defects are painted is our choice (several per good when few goods are held
    out); unweighted, F1 would then trade one false alarm for one more painted defect caught
    and put the threshold among the goods. Each good score counts ``weight`` times (sample
    weights, exactly), so a false alarm weighs what a missed defect does.
    """
    goods = validation.normal_scores
    painted = validation.scores[validation.labels == 1]
    weight = max(1, round(painted.size / goods.size))
    scores = np.concatenate([np.repeat(goods, weight), painted])
    labels = np.concatenate([np.zeros(goods.size * weight, np.int64),
                             np.ones(painted.size, np.int64)])
    result = thresholds.f1_optimal_with_margin(scores, labels)
    kinds = sorted({e.kind for e in validation.synthetic.values()})
    return thresholds.ThresholdResult(
        "synthetic_f1", result.value,
        {**result.params, "synthetic_defects": len(validation.synthetic), "kinds": kinds,
         "good_weight": weight})


def choose_threshold(validation: Validation) -> tuple[thresholds.ThresholdResult, dict]:
    """F1-optimal (mid-plateau, for a margin) on goods against the held-out defects, or
    against synthetic defects painted into held-out goods when no defect was held out
    (method ``synthetic_f1``); mean + 3 sigma of the good scores only when neither exists."""
    labels = validation.labels
    if labels.size and labels.min() == 0 and labels.max() == 1:
        if validation.synthetic:
            return _synthetic_f1(validation), image_metrics(validation.scores, labels)
        return (thresholds.f1_optimal_with_margin(validation.scores, labels),
                image_metrics(validation.scores, labels))
    if (labels == 0).sum() >= 2:
        result = thresholds.mean_k_sigma(validation.normal_scores, k=3.0)
        return thresholds.ThresholdResult(result.method, result.value,
                                          {**result.params, "why": FALLBACK_WHY}), {}
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


def _augmentation_config(augmentation: Mapping[str, Any]) -> tuple[AugmentConfig, int]:
    """The config and copy count a run recorded (``params["augmentation"]``), checked again:
    a run replays what was recorded, and a hand-edited or truncated record is refused by name."""
    from engine.augment import AugmentConfigError, validate_config  # see _Scorer.paint

    name = augmentation.get("preset", "?")
    try:
        config = validate_config(augmentation.get("config"))
    except AugmentConfigError as exc:
        raise TrainingInputError(f"params.augmentation.config (preset {name!r}): {exc}") from None
    copies = augmentation.get("copies")
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise TrainingInputError(f"params.augmentation.copies (preset {name!r}) must be a "
                                 f"whole number of at least 1, not {copies!r}")
    return config, copies


def _write_copies(train: Sequence[tuple[ImageRecord, np.ndarray, str]], config: AugmentConfig,
                  copies: int, directory: Path) -> tuple[list[np.ndarray], list[ImageSource]]:
    """``copies`` augmented copies of every shot (of an even spread of the shots when that
    would exceed MAX_AUGMENTED), each written as a PNG into ``directory``.

    The model learns the copies' patches, so "nearest normal patch" may point into one: the
    provenance must name a file that holds exactly those pixels (lossless PNG, its sha256).
    """
    from engine.augment import augmented_copies  # see _Scorer.paint
    from engine.augment.calibration import png_bytes

    if len(train) * copies > MAX_AUGMENTED:
        keep = np.unique(np.linspace(0, len(train) - 1, max(1, MAX_AUGMENTED // copies))
                         .round().astype(int))
        train = [train[i] for i in keep]
    images = [image for _, image, _ in train]
    made = augmented_copies(images, config, copies)
    if len(made) != len(images) * copies:  # the engine's contract: image-major order
        raise RuntimeError(f"augmentation made {len(made)} copies of {len(images)} images, "
                           f"expected {copies} each")
    sources = []
    for n, image in enumerate(made):
        record = train[n // copies][0]
        path = (Path(directory) / f"{n // copies:04d}_{Path(record.path).stem}_aug{n % copies}"
                ".png").resolve()
        digest = write_bytes_atomic(path, png_bytes(image))
        sources.append(ImageSource(str(path), digest, augmented=True))
    return made, sources


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
    augmentation: Mapping[str, Any] | None = None,
    augmented_dir: Path | None = None,
) -> TrainOutcome:
    """Fit on the chosen shots and score the held-out images; writes nothing but the
    augmented copies.

    ``expected_sha256`` (path -> sha256 recorded at import; projects pass it) refuses, by
    name, any file whose bytes changed since: every image is hashed from the bytes decoded.
    ``augmentation`` (a run's ``params["augmentation"]``: preset, copies, config) adds that
    many augmented copies of every shot to the fit, written as PNGs into ``augmented_dir``
    (required with it) so that provenance points at real files. Without held-out defects,
    synthetic defects are painted into held-out goods to set the threshold
    (:func:`choose_threshold`); they are kept in ``validation.synthetic`` for the caller.
    """
    params = dict(params or {})
    if "seed" in registry.spec(algorithm).default_config:
        params.setdefault("seed", seed)
    aug_config, copies = (None, 0) if augmentation is None else _augmentation_config(
        augmentation)
    if aug_config is not None and augmented_dir is None:
        raise ValueError("augmented copies need augmented_dir: a folder to write them to")
    report = progress or (lambda stage, fraction: None)
    stop = cancelled or (lambda: False)
    train_records, held_out = split_records(index, shots, seed)
    skipped: list[str] = []
    # synthetic defects only when no defect image is held out (painted while scoring goods)
    goods_held = [r for r in held_out if r.label == "good"]
    chosen, per_image = (([], 0) if any(r.label == "defect" for r in held_out)
                         else synthetic_plan(len(goods_held)))
    painted = {goods_held[i].path: j * per_image for j, i in enumerate(chosen)}
    n_train, n_copies = len(train_records), len(train_records) * copies
    n_held = len(held_out) + len(painted) * per_image
    # writing a copy costs about what reading a shot does (PNG encoding vs decoding)
    cost = LOAD_S * (n_train + n_copies) + FIT_S * (n_train + n_copies) + SCORE_S * n_held
    loaded_at = LOAD_S * n_train / cost
    augmented_at = loaded_at + LOAD_S * n_copies / cost
    fitted_at = augmented_at + FIT_S * (n_train + n_copies) / cost
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
    images = [image for _, image, _ in train]
    sources = [ImageSource(str(r.path), digest) for r, _, digest in train]
    summary = None
    if aug_config is not None and augmented_dir is not None:
        report("augmenting images", loaded_at)
        extra, extra_sources = _write_copies(train, aug_config, copies, augmented_dir)
        summary = {"preset": augmentation.get("preset") if augmentation else None,
                   "copies": copies, "augmented_images": len(extra)}
        images, sources = images + extra, sources + extra_sources
        del extra  # ``images`` holds them until the fit is done
        if stop():
            raise TrainingCancelled("training cancelled while augmenting images")
    model = _wait_for_model(creating, report, stop, augmented_at)

    def fit_progress(stage: str, fraction: float) -> None:
        if stop():
            raise TrainingCancelled(f"training cancelled while {stage}")
        if stage != "done":  # a model's own "done" is not the end of the training
            report(stage, augmented_at + (fitted_at - augmented_at) * fraction)

    evidence = colour_evidence(model, goods_held, expected_sha256)
    fit = model.fit(images, progress=fit_progress, sources=sources, **evidence)
    del images, evidence  # the copies are no longer needed; validation may hold many images
    scorer = _Scorer(model)
    for i, record in enumerate(held_out):
        if stop():
            raise TrainingCancelled("training cancelled while validating")
        loaded = load_held_out(record, expected_sha256, skipped)
        if loaded is None:
            continue
        image, mask = loaded
        scorer.add(str(record.path), image, int(record.label == "defect"), mask)
        if record.path in painted:
            scorer.paint(str(record.path), image, seed, per_image, painted[record.path])
        report("scoring validation images",
               fitted_at + (0.99 - fitted_at) * (i + 1) / max(1, len(held_out)))
    validation = scorer.validation()
    report("choosing the threshold", 0.99)
    threshold, metrics = choose_threshold(validation)
    metrics.update(validation_pixel_metrics(validation))
    if getattr(getattr(model, "state", None), "gray", False):  # what colour="auto" decided
        metrics["colour_ignored"] = 1.0
    return TrainOutcome(model, algorithm, params, [str(r.path) for r, _, _ in train], fit,
                        validation, threshold, {k: float(v) for k, v in metrics.items()}, skipped,
                        sources, summary)


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


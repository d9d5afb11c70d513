"""Score images with a fitted model: verdicts, normalised scores, confidence, regions, heatmaps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine import thresholds
from engine.artifacts import write_bytes_atomic
from engine.data import IMAGE_SUFFIXES, ImageLoadError, load_image, sha256_file
from engine.models import AnomalyModel
from engine.regions import find_regions


@dataclass(frozen=True)
class ThresholdInfo:
    """The decision rule in force: raw threshold plus the good scores it was chosen on."""

    value: float
    method: str
    normal_scores: tuple[float, ...] = ()

    def normalized(self, raw: float | np.ndarray) -> float | np.ndarray:
        """0.5 at the threshold; falls back to a ratio when the good scores are too few."""
        if len(self.normal_scores) >= 1:
            try:
                out = thresholds.normalize(np.atleast_1d(raw), self.value, self.normal_scores)
                return float(out[0]) if np.ndim(raw) == 0 else out
            except ValueError:
                pass
        arr = np.asarray(raw)
        arr = arr if arr.dtype == np.float32 else arr.astype(np.float64)  # no float64 map copy
        out = np.clip(0.5 * arr / max(self.value, 1e-12), 0, 1)
        return float(out) if np.ndim(raw) == 0 else out

    def confidence(self, raw: float) -> float:
        if len(self.normal_scores) >= 2:
            return float(thresholds.confidence(raw, self.value, self.normal_scores))
        return 0.5 + 0.5 * min(1.0, abs(raw - self.value) / max(abs(self.value), 1e-12))


@dataclass
class ImagePrediction:
    path: str
    sha256: str
    raw_score: float
    normalized_score: float
    verdict: str
    confidence: float
    regions: list[dict] = field(default_factory=list)
    score_map: np.ndarray | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "score_map"}


@dataclass(frozen=True)
class ScoringProblem:
    path: str
    message: str


def predict_image(model: AnomalyModel, image: np.ndarray, path: str, sha256: str,
                  rule: ThresholdInfo) -> ImagePrediction:
    result = model.score([image])
    raw = float(result.scores[0])
    score_map = result.maps[0]
    verdict = "defect" if raw >= rule.value else "good"
    regions = []
    if verdict == "defect":
        regions = [r.as_dict() for r in find_regions(score_map, rule.value)]
    return ImagePrediction(path, sha256, raw, float(rule.normalized(raw)), verdict,
                           rule.confidence(raw), regions, score_map)


def iter_predictions(
    model: AnomalyModel,
    paths: Sequence[Path],
    rule: ThresholdInfo,
    skip_sha256: set[str] | frozenset[str] = frozenset(),
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[ImagePrediction | ScoringProblem]:
    """One result per file: a prediction, or a problem naming the file; known sha256s skipped."""
    for i, path in enumerate(paths):
        try:
            digest = sha256_file(path)
            if digest in skip_sha256:
                continue
            image = load_image(path)
        except (ImageLoadError, OSError) as exc:
            yield ScoringProblem(str(path), str(exc))
            continue
        yield predict_image(model, image, str(path), digest, rule)
        if progress:
            progress(i + 1, len(paths))


def heatmap_png(score_map: np.ndarray, rule: ThresholdInfo) -> bytes:
    """8-bit PNG of the normalised map (128 = threshold), small enough to keep for every image."""
    normalized = np.asarray(rule.normalized(score_map.astype(np.float32, copy=False)))
    ok, encoded = cv2.imencode(".png", np.round(normalized * 255).astype(np.uint8))
    if not ok:
        raise RuntimeError("could not encode the heatmap as PNG")
    return encoded.tobytes()


def save_heatmap(score_map: np.ndarray, rule: ThresholdInfo, path: Path) -> str:
    """Atomic write of :func:`heatmap_png`; returns its sha256."""
    return write_bytes_atomic(path, heatmap_png(score_map, rule))


def image_files(path: Path) -> list[Path]:
    """One image, or every image below a folder (sorted) — what ``score PATH`` accepts."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    raise FileNotFoundError(f"{path}: no such file or folder")

"""Kensa's default detector: a PatchCore-style memory bank tuned for a handful of good shots.

Differences from stock PatchCore, each kept because it measurably helps with few shots
(see bench/fewshot.py and the engine issue's closing note):
- aspect-preserving resize of the whole image (no squashing, no centre crop), so defects near
  the border are seen and elongated parts keep their texture scale;
- flipped/rotated copies of the shots in the bank while shots are few;
- the full bank while it is small, a greedy coreset only above ``max_bank`` vectors, which also
  bounds scoring time: exact kNN costs queries x bank x dim;
- anomaly maps smoothed at the working resolution and brought back to the original size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.artifacts import write_json_atomic
from engine.backbones import DEFAULT_BACKBONE
from engine.coreset import GreedyCoresetSampler
from engine.device import pick_device
from engine.features import Normalization, PatchFeatureExtractor
from engine.memory_bank import MemoryBank
from engine.models.augment_views import ViewMode, grid_coordinates, iter_views, views_for
from engine.models.base import FitReport, ProgressFn, ScoreResult
from engine.models.preprocess import GRID_STRIDE, resize_map, to_tensor

MODEL_FILE = "model.json"
BANK_FILE = "bank.safetensors"


@dataclass(frozen=True)
class FewShotConfig:
    """Every knob of the pipeline; the defaults are the ones the benchmarks justify."""

    backbone: str = DEFAULT_BACKBONE
    image_size: int = 384
    views: ViewMode = "auto"
    max_bank: int = 10_000
    n_neighbors: int = 1
    normalization: Normalization = "none"
    blur_sigma: float = 4.0
    match_intensity: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 64 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be in [64, 2048], got {self.image_size}")
        if self.max_bank < 100:
            raise ValueError(f"max_bank must be at least 100, got {self.max_bank}")
        if not 1 <= self.n_neighbors <= 16:
            raise ValueError(f"n_neighbors must be in [1, 16], got {self.n_neighbors}")


@dataclass
class TrainingImage:
    """Where the bank's patches came from: enough to crop a nearest normal patch later."""

    name: str
    height: int
    width: int
    grid_height: int
    grid_width: int


@dataclass
class FewShotState:
    config: FewShotConfig
    images: list[TrainingImage] = field(default_factory=list)
    n_patches: int = 0
    intensity: tuple[float, float] = (0.45, 0.22)


class FewShotPatchCore:
    """``fit(good images)`` builds the bank; ``score(images)`` gives scores and anomaly maps."""

    name = "kensa_patchcore"

    def __init__(self, config: FewShotConfig | None = None, device: str | None = None) -> None:
        self.config = config or FewShotConfig()
        self.device = pick_device(device)
        self.extractor = PatchFeatureExtractor(
            self.config.backbone, normalization=self.config.normalization
        ).to(self.device)
        self.bank: MemoryBank | None = None
        self.state = FewShotState(self.config)

    # -- features -------------------------------------------------------------------------
    def _features(self, tensor: torch.Tensor) -> torch.Tensor:
        """[1,3,h,w] -> [1,D,h/8,w/8]."""
        tensor = tensor.to(self.device)
        if self.config.match_intensity:
            tensor = self._match_intensity(tensor)
        return self.extractor(tensor)

    def _match_intensity(self, tensor: torch.Tensor) -> torch.Tensor:
        """Give every image the training shots' mean brightness and contrast.

        Lighting and exposure drift between parts; with few shots the bank has seen one
        exposure, so a darker good part would light up everywhere.
        """
        mean = tensor.mean(dim=(2, 3), keepdim=True)
        std = tensor.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        target_mean, target_std = self.state.intensity
        return ((tensor - mean) / std * target_std + target_mean).clamp(0, 1)

    # -- fit ------------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[np.ndarray],
        progress: ProgressFn | None = None,
        names: Sequence[str] | None = None,
    ) -> FitReport:
        if len(images) == 0:
            raise ValueError("fit needs at least one good image")
        started = time.perf_counter()
        names = list(names) if names is not None else [f"image_{i}" for i in range(len(images))]
        tensors = [to_tensor(image, self.config.image_size) for image in images]
        self.state = FewShotState(self.config, intensity=(
            float(np.mean([t.mean() for t in tensors])),
            float(np.mean([t.std() for t in tensors]))))
        views = views_for(self.config.views, len(images))
        all_vectors, all_provenance = self.embed(tensors, views, progress=progress)
        records = [
            TrainingImage(name, image.shape[0], image.shape[1],
                          t.shape[-2] // GRID_STRIDE, t.shape[-1] // GRID_STRIDE)
            for name, image, t in zip(names, images, tensors, strict=True)
        ]
        bank = MemoryBank(all_vectors, all_provenance)
        if len(bank) > self.config.max_bank:
            if progress:
                progress("selecting coreset", 0.85)
            sampler = GreedyCoresetSampler(size=self.config.max_bank, seed=self.config.seed)
            bank = bank.subsample(sampler.run(bank.vectors))
        if progress:
            progress("done", 1.0)
        self.bank = bank
        self.state.images = records
        self.state.n_patches = int(all_vectors.shape[0])
        return FitReport(len(images), int(all_vectors.shape[0]), len(bank),
                         time.perf_counter() - started)

    def embed(
        self,
        tensors: Sequence[torch.Tensor],
        views: list[tuple[int, bool]],
        first_id: int = 0,
        progress: ProgressFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch vectors of every view of every image, provenance in original coordinates.

        Shared by ``fit`` and bank updates, so new good images enter the bank exactly as the
        first shots did; image ids start at ``first_id`` so provenance never collides.
        """
        vectors: list[torch.Tensor] = []
        provenance: list[torch.Tensor] = []
        for offset, tensor in enumerate(tensors):
            gh, gw = tensor.shape[-2] // GRID_STRIDE, tensor.shape[-1] // GRID_STRIDE
            for viewed, view in iter_views(tensor, views):
                feats = self._features(viewed)[0]  # [D,h',w']
                vectors.append(feats.flatten(1).T.contiguous())
                coords = grid_coordinates(gh, gw, view)
                if coords.shape[0] != vectors[-1].shape[0]:
                    raise RuntimeError(
                        f"feature grid {tuple(feats.shape[1:])} does not match {gh}x{gw}"
                    )
                ids = torch.full((coords.shape[0], 1), first_id + offset, dtype=torch.int64)
                provenance.append(torch.cat([ids, coords], dim=1))
            if progress:
                progress("extracting features", 0.8 * (offset + 1) / len(tensors))
        return torch.cat(vectors), torch.cat(provenance)

    def embed_images(self, images: Sequence[np.ndarray], first_id: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """New good images -> (vectors, provenance) with the views the bank was built with."""
        views = views_for(self.config.views, max(1, len(self.state.images)))
        tensors = [to_tensor(image, self.config.image_size) for image in images]
        return self.embed(tensors, views, first_id)

    # -- score ----------------------------------------------------------------------------
    def patch_distances(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """kNN of every patch of one image: distances [h*w,k], indices [h*w,k], grid shape."""
        if self.bank is None:
            raise RuntimeError("the model has no memory bank yet: call fit() or load() first")
        tensor = to_tensor(image, self.config.image_size)
        feats = self._features(tensor)[0]
        grid = tuple(feats.shape[1:])
        result = self.bank.knn(feats.flatten(1).T, k=self.config.n_neighbors)
        return result.distances, result.indices, (grid, tuple(tensor.shape[-2:]))

    def score_one(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        distances, _, (grid, work_size) = self.patch_distances(image)
        patch = distances.mean(dim=1).reshape(grid).float().cpu().numpy()
        work = cv2.resize(patch, (work_size[1], work_size[0]), interpolation=cv2.INTER_LINEAR)
        if self.config.blur_sigma > 0:
            work = cv2.GaussianBlur(work, (0, 0), self.config.blur_sigma)
        score = float(work.max())
        return score, resize_map(work, image.shape[0], image.shape[1])

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        scores, maps = [], []
        for image in images:
            s, m = self.score_one(image)
            scores.append(s)
            maps.append(m)
        return ScoreResult(np.asarray(scores, dtype=np.float64), maps)

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, str]:
        """Bank as safetensors and the config as JSON, each written atomically."""
        if self.bank is None:
            raise RuntimeError("nothing to save: the model has not been fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bank_sha = self.bank.save(directory / BANK_FILE,
                                  metadata={"backbone": self.config.backbone})
        payload = {
            "model": self.name,
            "config": asdict(self.config),
            "images": [asdict(r) for r in self.state.images],
            "n_patches": self.state.n_patches,
            "intensity": list(self.state.intensity),
            "bank_file": BANK_FILE,
            "bank_sha256": bank_sha,
        }
        return {BANK_FILE: bank_sha, MODEL_FILE: write_json_atomic(directory / MODEL_FILE, payload)}

    @classmethod
    def load(cls, directory: Path, device: str | None = None,
             bank_file: Path | None = None, bank_sha256: str | None = None) -> FewShotPatchCore:
        """Rebuild a fitted model; ``bank_file`` lets a caller load another bank version."""
        directory = Path(directory)
        try:
            payload = json.loads((directory / MODEL_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot read model description {directory / MODEL_FILE}: {exc}"
            ) from exc
        model = cls(FewShotConfig(**payload["config"]), device=device)
        model.state = FewShotState(model.config,
                                   [TrainingImage(**r) for r in payload["images"]],
                                   int(payload["n_patches"]),
                                   tuple(payload.get("intensity", (0.45, 0.22))))
        path = Path(bank_file) if bank_file else directory / payload["bank_file"]
        expected = bank_sha256 if bank_file else (bank_sha256 or payload["bank_sha256"])
        model.bank = MemoryBank.load(path, expected_sha256=expected, device=model.device)
        return model


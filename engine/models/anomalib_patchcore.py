"""Stock anomalib PatchCore behind Kensa's model interface, for honest comparisons.

Same backbone and the same bundled ImageNet weights as Kensa's default, anomalib's own
pre-processing (256 x 256 resize), embedding, KCenterGreedy coreset (ratio 0.1) and scoring. The
Lightning Engine is not needed: PatchCore has no optimisation step, so feeding the torch model in
training mode and calling ``subsample_embedding`` is exactly what ``Patchcore.fit`` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from engine.artifacts import write_bytes_atomic, write_json_atomic
from engine.backbones import get_spec, load_imagenet_state_dict
from engine.device import pick_device
from engine.models.base import FitReport, ProgressFn, ScoreResult
from engine.models.preprocess import resize_map


class AnomalibPatchCore:
    """anomalib 2.x ``Patchcore`` (stock settings) with Kensa's ``fit``/``score`` contract."""

    name = "anomalib_patchcore"

    def __init__(self, backbone: str = "efficientnet_lite0", coreset_ratio: float = 0.1,
                 device: str | None = None) -> None:
        from anomalib.models import Patchcore

        spec = get_spec(backbone)
        self.device = pick_device(device)
        self.coreset_ratio = coreset_ratio
        module = Patchcore(backbone=spec.timm_name, layers=list(spec.layers), pre_trained=False,
                           coreset_sampling_ratio=coreset_ratio)
        if spec.weights != "hub":
            extractor = module.model.feature_extractor.feature_extractor
            extractor.load_state_dict(load_imagenet_state_dict(spec), strict=False)
        self.transform = module.pre_processor.transform
        self.model = module.model.to(self.device)

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return self.transform(tensor[None]).to(self.device)

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None) -> FitReport:
        started = time.perf_counter()
        self.model.train()
        self.model.embedding_store = []
        for i, image in enumerate(images):
            self.model(self._prepare(image))
            if progress:
                progress("extracting features", 0.8 * (i + 1) / len(images))
        n_patches = sum(int(e.shape[0]) for e in self.model.embedding_store)
        self.model.subsample_embedding(self.coreset_ratio)
        self.model.eval()
        return FitReport(len(images), n_patches, int(self.model.memory_bank.shape[0]),
                         time.perf_counter() - started)

    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        scores, maps = [], []
        for image in images:
            out = self.model(self._prepare(image))
            scores.append(float(out.pred_score.reshape(-1)[0]))
            amap = out.anomaly_map.reshape(out.anomaly_map.shape[-2:]).float().cpu().numpy()
            maps.append(resize_map(amap, image.shape[0], image.shape[1]))
        return ScoreResult(np.asarray(scores, dtype=np.float64), maps)

    def save(self, directory: Path) -> dict[str, str]:
        """The coreset as safetensors plus a JSON description, both atomic."""
        from safetensors.torch import save

        directory = Path(directory)
        data = save({"memory_bank": self.model.memory_bank.contiguous().cpu()})
        return {
            "anomalib_bank.safetensors": write_bytes_atomic(
                directory / "anomalib_bank.safetensors", data),
            "anomalib_model.json": write_json_atomic(
                directory / "anomalib_model.json",
                {"model": self.name, "coreset_ratio": self.coreset_ratio}),
        }

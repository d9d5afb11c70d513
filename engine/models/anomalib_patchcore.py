"""Stock anomalib PatchCore behind Kensa's model interface, for honest comparisons.

Same backbone and the same bundled ImageNet weights as Kensa's default, anomalib's own
pre-processing (256 x 256 resize), embedding, KCenterGreedy coreset (ratio 0.1) and scoring. The
Lightning Engine is not needed: PatchCore has no optimisation step, so feeding the torch model in
training mode and calling ``subsample_embedding`` is exactly what ``Patchcore.fit`` does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.artifacts import write_bytes_atomic, write_json_atomic
from engine.backbones import BackboneUnavailableError, get_spec, load_imagenet_state_dict
from engine.device import pick_device
from engine.models.base import (
    MODEL_FILE,
    Capability,
    FitReport,
    ImageSource,
    ModelStateError,
    ProgressFn,
    ScoreResult,
    read_model_json,
    read_tensor_file,
    require,
)
from engine.models.preprocess import resize_map

BANK_FILE = "anomalib_bank.safetensors"


class AnomalibPatchCore:
    """anomalib 2.x ``Patchcore`` (stock settings) with Kensa's model contract.

    Its bank has no provenance and no incremental update: anomalib keeps bare vectors.
    """

    name = "anomalib_patchcore"
    capabilities = frozenset({Capability.MEMORY_BANK})

    def __init__(self, backbone: str = "efficientnet_lite0", coreset_ratio: float = 0.1,
                 device: str | None = None) -> None:
        from anomalib.models import Patchcore

        if not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        spec = get_spec(backbone)
        self.backbone = spec.name
        self.device = pick_device(device)
        self.coreset_ratio = coreset_ratio
        module = Patchcore(backbone=spec.timm_name, layers=list(spec.layers), pre_trained=False,
                           coreset_sampling_ratio=coreset_ratio)
        if spec.weights != "hub":
            extractor = module.model.feature_extractor.feature_extractor
            result = extractor.load_state_dict(load_imagenet_state_dict(spec), strict=False)
            # strict=False because the features-only network has no classifier head; every
            # key it DOES have must have come from the file, or it would score with random
            # weights and nobody would notice.
            if result.missing_keys:
                raise BackboneUnavailableError(
                    f"{spec.name}: the bundled weights left {len(result.missing_keys)} "
                    f"feature-extractor weights unset: {', '.join(result.missing_keys[:5])}"
                )
        self.transform = module.pre_processor.transform
        self.model = module.model.to(self.device)

    @staticmethod
    def validate_params(params: Mapping[str, Any]) -> None:
        """Refuse bad parameters before anomalib is imported (seconds) or weights load."""
        ratio = float(params.get("coreset_ratio", 0.1))
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {ratio}")
        get_spec(str(params.get("backbone", "efficientnet_lite0")))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], device: str | None = None
                    ) -> AnomalibPatchCore:
        """The registry's constructor: plain parameters (backbone, coreset_ratio)."""
        return cls(device=device, **params)

    @property
    def vector_count(self) -> int:
        return int(self.model.memory_bank.shape[0])

    @property
    def dim(self) -> int:
        bank = self.model.memory_bank
        return int(bank.shape[1]) if bank.ndim == 2 else 0

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return self.transform(tensor[None]).to(self.device)

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None,
            sources: Sequence[ImageSource] | None = None, first_id: int = 0) -> FitReport:
        """Stock fit; ``sources`` / ``first_id`` are accepted and unused (no provenance)."""
        if len(images) == 0:
            raise ValueError("fit needs at least one good image")
        started = time.perf_counter()
        self.model.train()
        self.model.embedding_store = []
        for i, image in enumerate(images):
            self.model(self._prepare(image))
            if progress:
                progress("extracting features", 0.8 * (i + 1) / len(images))
        n_patches = sum(int(e.shape[0]) for e in self.model.embedding_store)
        if progress:
            progress("selecting coreset", 0.85)
        self.model.subsample_embedding(self.coreset_ratio)
        self.model.embedding_store = []
        self.model.eval()
        if progress:
            progress("done", 1.0)
        return FitReport(len(images), n_patches, self.vector_count,
                         time.perf_counter() - started)

    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        if self.vector_count == 0:
            raise RuntimeError("the model has no memory bank yet: call fit() or load() first")
        scores, maps = [], []
        for image in images:
            out = self.model(self._prepare(image))
            scores.append(float(out.pred_score.reshape(-1)[0]))
            amap = out.anomaly_map.reshape(out.anomaly_map.shape[-2:]).float().cpu().numpy()
            maps.append(resize_map(amap, image.shape[0], image.shape[1]))
        return ScoreResult(np.asarray(scores, dtype=np.float64), maps)

    def save(self, directory: Path) -> dict[str, str]:
        """The coreset as safetensors plus ``model.json``, both atomic."""
        from safetensors.torch import save

        if self.vector_count == 0:
            raise RuntimeError("nothing to save: the model has not been fitted")
        directory = Path(directory)
        data = save({"memory_bank": self.model.memory_bank.contiguous().cpu()})
        bank_sha = write_bytes_atomic(directory / BANK_FILE, data)
        payload = {"model": self.name, "backbone": self.backbone,
                   "coreset_ratio": self.coreset_ratio, "bank_file": BANK_FILE,
                   "bank_sha256": bank_sha}
        return {BANK_FILE: bank_sha, MODEL_FILE: write_json_atomic(directory / MODEL_FILE, payload)}

    @classmethod
    def load(cls, directory: Path, files: Mapping[str, str] | None = None,
             device: str | None = None) -> AnomalibPatchCore:
        """Rebuild from ``save``'s files (every file named in ``files`` verified first)."""
        directory = Path(directory)
        payload = read_model_json(directory, files, cls.name)
        tensors = read_tensor_file(directory, payload, "bank_file", files)
        if "memory_bank" not in tensors:
            raise ModelStateError(f"{directory / str(payload['bank_file'])} is not an anomalib "
                                  "bank: it holds no 'memory_bank'")
        bank = tensors["memory_bank"]
        try:
            model = cls(backbone=str(require(payload, "backbone", directory)),
                        coreset_ratio=float(require(payload, "coreset_ratio", directory)),
                        device=device)
        except (TypeError, ValueError, KeyError) as exc:
            if isinstance(exc, ModelStateError):
                raise
            raise ModelStateError(f"model description {directory / MODEL_FILE}: {exc}") from None
        model.model.memory_bank = bank.to(model.device)
        model.model.eval()
        return model

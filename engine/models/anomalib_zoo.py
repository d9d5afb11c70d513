"""anomalib 2.x detectors behind Kensa's model contract: one adapter, one recipe per model.

Every anomalib model is a Lightning module whose ``.model`` is a plain ``nn.Module`` holding the
algorithm (anomalib's ``torch_model.py``). The adapter trains it with a bare Lightning
``Trainer`` (no anomalib ``Engine``: Kensa chooses thresholds and normalises scores itself, so
anomalib's post-processor, evaluator and visualizer are switched off and scores stay raw), scores
with the torch model alone, and saves its ``state_dict`` as safetensors: no pickles, and a
state loads into a freshly built module the same way whatever the model.

Offline first: models that take a timm backbone are built with ``pre_trained=False`` and then
given the bundled EfficientNet-Lite0 ImageNet weights (the same positional mapping the stock
PatchCore wrapper uses); a feature extractor left with a missing weight is an error, never a
silently random network. Models whose anomalib class insists on downloading (a fixed
hub-backed teacher, CLIP, DINOv2, ImageNette, a ResNet-mirroring decoder) are registered as
needing the network and refuse at once, with the reason, when the hub cannot be reached.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from engine.artifacts import write_bytes_atomic, write_json_atomic
from engine.backbones import (
    BackboneUnavailableError,
    get_spec,
    hub_reachable,
    load_imagenet_state_dict,
)
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

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "anomalib_weights.safetensors"
IMAGE_SIZE_RANGE = (64, 1024)


def _backbone_kwargs(params: Mapping[str, Any], layers: tuple[str, ...]) -> dict[str, Any]:
    return {"backbone": get_spec(str(params["backbone"])).timm_name, "layers": list(layers),
            "pre_trained": False}


@dataclass(frozen=True)
class Recipe:
    """How one anomalib class is built from Kensa parameters.

    ``layers``: the EfficientNet-Lite stages standing in for the ResNet layers the paper used,
    chosen by stride (Lite0 ``blocks.1/2/4/6`` are strides 4/8/16/32, like ResNet
    ``layer1/2/3/4``). ``build(params, n_images)`` returns the class's keyword arguments; it
    sees the number of training images because some statistics (PCA components) cannot
    exceed it.
    """

    anomalib_class: str
    build: Callable[[Mapping[str, Any], int], dict[str, Any]]
    #: optimised over epochs (``epochs``, ``patience`` apply) rather than one pass
    trained: bool = False
    #: the model gives an image score only; its map is that score everywhere
    image_level: bool = False
    #: at least this many training images (a statistic needs them)
    min_images: int = 1
    #: the model's map is relative to the batch it is scored in (CFlow subtracts the batch's
    #: maximum likelihood): scored one image at a time, so a score never depends on which
    #: other images came with it, and the exported batch-1 file gives the same numbers
    batch_relative: bool = False


def _padim(params: Mapping[str, Any], n_images: int) -> dict[str, Any]:
    # Lite0 blocks.1/2/4 have 24 + 40 + 112 = 176 channels; PaDiM keeps a random 100 of them
    # (its resnet18 recipe keeps 100 of 448), which keeps the per-cell covariance well posed
    # from few images.
    return {**_backbone_kwargs(params, ("blocks.1", "blocks.2", "blocks.4")),
            "n_features": int(params["n_features"])}


def _dfm(params: Mapping[str, Any], n_images: int) -> dict[str, Any]:
    kwargs = _backbone_kwargs(params, ("blocks.4",))
    kwargs["layer"] = kwargs.pop("layers")[0]
    return {**kwargs, "pca_level": float(params["pca_level"]), "score_type": "fre"}


def _dfkde(params: Mapping[str, Any], n_images: int) -> dict[str, Any]:
    # One feature vector per image: PCA cannot have more components than images minus one.
    return {**_backbone_kwargs(params, ("blocks.6",)),
            "n_pca_components": max(1, min(int(params["n_pca_components"]), n_images - 1))}


def _cflow(params: Mapping[str, Any], n_images: int) -> dict[str, Any]:
    # CFlow trains on "fiber batches" of cells; anomalib refuses a batch with fewer cells than
    # one fiber batch (64), which a small image (the stride-32 stage of 96 px is 3 x 3) or the
    # last, one-image batch gives. One image's coarsest grid bounds it.
    cells = max(1, (int(params["image_size"]) // 32) ** 2)
    return {**_backbone_kwargs(params, ("blocks.2", "blocks.4", "blocks.6")),
            "lr": float(params["lr"]), "fiber_batch_size": min(64, cells)}


def _draem(params: Mapping[str, Any], n_images: int) -> dict[str, Any]:
    return {}  # trained from scratch: no backbone; the texture source is set in _build


RECIPES: dict[str, Recipe] = {
    "anomalib_padim": Recipe("Padim", _padim),
    "anomalib_dfm": Recipe("Dfm", _dfm),
    "anomalib_dfkde": Recipe("Dfkde", _dfkde, image_level=True, min_images=2),
    "anomalib_cflow": Recipe("Cflow", _cflow, trained=True, batch_relative=True),
    "anomalib_draem": Recipe("Draem", _draem, trained=True),
}

#: Parameters every zoo model has; trained ones add ``epochs``, ``patience``.
COMMON_DEFAULTS: dict[str, Any] = {"image_size": 256, "batch_size": 8, "seed": 0}
TRAINED_DEFAULTS: dict[str, Any] = {"epochs": 10, "patience": 0}


def check_common(params: Mapping[str, Any], trained: bool) -> None:
    """One-line errors for the parameters every zoo model shares."""
    lo, hi = IMAGE_SIZE_RANGE
    size = int(params.get("image_size", COMMON_DEFAULTS["image_size"]))
    if not lo <= size <= hi:
        raise ValueError(f"image_size must be in [{lo}, {hi}], got {size}")
    batch = int(params.get("batch_size", COMMON_DEFAULTS["batch_size"]))
    if not 1 <= batch <= 256:
        raise ValueError(f"batch_size must be in [1, 256], got {batch}")
    if trained:
        epochs = int(params.get("epochs", TRAINED_DEFAULTS["epochs"]))
        if not 1 <= epochs <= 1000:
            raise ValueError(f"epochs must be in [1, 1000], got {epochs}")
        patience = int(params.get("patience", TRAINED_DEFAULTS["patience"]))
        if not 0 <= patience <= 1000:
            raise ValueError(f"patience must be in [0, 1000] (0: no early stopping), "
                             f"got {patience}")
    if "backbone" in params:
        backbone = get_spec(str(params["backbone"]))
        if backbone.weights == "hub":
            raise ValueError(f"backbone {backbone.name!r} needs network access; zoo models "
                             "use the bundled EfficientNet-Lite weights")


#: Lightning's notes that are expected here (no validation loop, no logger, no optimizer for
#: one-pass models, frozen backbones in eval mode) and would only bury a real warning.
_EXPECTED = (".*val_dataloader.*", ".*configure_optimizers.*returned .None.*",
             ".*module\\(s\\) in eval mode.*", ".*have no logger configured.*",
             ".*infer the .batch_size.*", ".*LeafSpec.*", ".*does not have many workers.*")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner ("GPU available: ...") and its expected warnings for one
    fit, restoring the log level afterwards (logging levels are process-wide)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _EXPECTED:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        logger.setLevel(level)


def _to_batch(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 H x W x 3 images -> float [B,3,size,size] in [0, 1] (antialiased resize)."""
    import torch
    import torch.nn.functional as F

    out = []
    for image in images:
        # a copy: images may be read-only views (torch warns on non-writable arrays)
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        out.append(F.interpolate(tensor[None], size=(size, size), mode="bilinear",
                                 antialias=True, align_corners=False)[0])
    return torch.stack(out)


class AnomalibZooModel:
    """One anomalib model (``recipe``) with Kensa's contract; subclasses only name it.

    The anomalib module is built at ``fit`` (some sizes depend on the number of images) and
    at ``load`` from the keyword arguments saved in ``model.json``, so a saved state always
    rebuilds the very module whose weights it holds.
    """

    name: ClassVar[str]
    #: every offline recipe traces to ONNX with scores equal to ``score``'s (tests/engine/
    #: export/test_zoo_export.py); the network-only ones are not verified here and say so
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.EXPORT})

    def __init__(self, params: Mapping[str, Any], device: str | None = None) -> None:
        from engine.device import pick_device

        self.recipe = RECIPES[self.name]
        self.params = {**self.defaults(), **params}
        self.validate_params(self.params)
        self.device = pick_device(device)
        self.module: Any = None
        self.kwargs: dict[str, Any] = {}
        self.epochs_run = 0

    # ------------------------------------------------------------------ registry hooks
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        from engine.models import registry

        return dict(registry.spec(cls.name).default_config)

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        check_common(params, RECIPES[cls.name].trained)
        if "n_features" in params and not 1 <= int(params["n_features"]) <= 176:
            raise ValueError(f"n_features must be in [1, 176], got {params['n_features']}")
        if "pca_level" in params and not 0.0 < float(params["pca_level"]) < 1.0:
            raise ValueError(f"pca_level must be in (0, 1), got {params['pca_level']}")
        if "n_pca_components" in params and not 1 <= int(params["n_pca_components"]) <= 64:
            raise ValueError(f"n_pca_components must be in [1, 64], got "
                             f"{params['n_pca_components']}")
        if "lr" in params and not 0.0 < float(params["lr"]) < 1.0:
            raise ValueError(f"lr must be in (0, 1), got {params['lr']}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], device: str | None = None
                    ) -> AnomalibZooModel:
        return cls(params, device=device)

    # ------------------------------------------------------------------ building
    def _build(self, kwargs: Mapping[str, Any]) -> Any:
        """The anomalib Lightning module, raw scores, bundled backbone weights loaded."""
        import anomalib.models
        from anomalib.models.components import TimmFeatureExtractor

        cls = getattr(anomalib.models, self.recipe.anomalib_class)
        size = int(self.params["image_size"])
        options = {**kwargs, "pre_processor": cls.configure_pre_processor(image_size=(size, size)),
                   "post_processor": False, "evaluator": False, "visualizer": False}
        if self.recipe.anomalib_class == "Draem":
            # anomalib downloads the DTD textures when ``dtd_dir`` does not exist; an empty
            # folder makes its Perlin generator paint procedural textures instead (it lists the
            # folder once, when built), so no download happens and nothing is left behind.
            with tempfile.TemporaryDirectory(prefix="kensa-draem-") as empty:
                module = cls(**options, dtd_dir=empty)
        else:
            module = cls(**options)
        extractors = [m for m in module.modules() if isinstance(m, TimmFeatureExtractor)]
        if extractors:
            state = load_imagenet_state_dict(get_spec(str(self.params["backbone"])))
            for extractor in extractors:
                result = extractor.feature_extractor.load_state_dict(state, strict=False)
                # strict=False: the features-only network has no classifier head; every key
                # it does have must come from the file.
                if result.missing_keys:
                    raise BackboneUnavailableError(
                        f"{self.name}: the bundled weights left {len(result.missing_keys)} "
                        f"backbone weights unset: {', '.join(result.missing_keys[:5])}")
        return module

    @property
    def fitted(self) -> bool:
        return self.module is not None

    # ------------------------------------------------------------------ fit / score
    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None,
            sources: Sequence[ImageSource] | None = None, first_id: int = 0) -> FitReport:
        """Lightning training (one pass, or ``epochs`` with optional early stopping on the
        training loss); ``sources`` / ``first_id`` are accepted and unused (no provenance)."""
        import torch
        from lightning.pytorch import Trainer, seed_everything

        if len(images) < self.recipe.min_images:
            raise ValueError(f"{self.name} needs at least {self.recipe.min_images} good "
                             f"images, got {len(images)}")
        started = time.perf_counter()
        seed_everything(int(self.params["seed"]), workers=False, verbose=False)
        self.module = None  # a fit that fails leaves no half-trained model behind
        kwargs = self.recipe.build(self.params, len(images))
        module = self._build(kwargs)
        data = _to_batch(images, int(self.params["image_size"]))
        loader = torch.utils.data.DataLoader(
            _Images(data), batch_size=int(self.params["batch_size"]), shuffle=self.recipe.trained,
            collate_fn=_collate, generator=torch.Generator().manual_seed(int(self.params["seed"])))
        epochs = int(self.params["epochs"]) if self.recipe.trained else 1
        callbacks: list[Any] = [_Progress(progress, epochs, len(loader))]
        if self.recipe.trained and int(self.params["patience"]) > 0:
            callbacks.append(_Plateau(int(self.params["patience"])))
        arguments = {k: v for k, v in module.trainer_arguments.items()
                     if k in ("gradient_clip_val", "gradient_clip_algorithm")}
        with _quiet_lightning():
            trainer = Trainer(
                accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1,
                max_epochs=epochs, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                limit_val_batches=0, callbacks=callbacks, deterministic=False, **arguments)
            trainer.fit(module, train_dataloaders=loader)
        module.model.to(self.device).eval()
        self.module, self.kwargs = module, kwargs
        #: epochs actually trained (fewer than ``epochs`` when early stopping ended it)
        self.epochs_run = int(trainer.current_epoch)
        if progress:
            progress("done", 1.0)
        return FitReport(len(images), len(images), 0, time.perf_counter() - started)

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        import torch

        if not self.fitted:
            raise RuntimeError(f"{self.name} is not fitted: call fit() or load() first")
        scores: list[float] = []
        maps: list[np.ndarray] = []
        size = int(self.params["image_size"])
        batch = 1 if self.recipe.batch_relative else int(self.params["batch_size"])
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                chunk = images[start:start + batch]
                x = self.module.pre_processor.transform(_to_batch(chunk, size)).to(self.device)
                out = self.module.model(x)
                pred = out.pred_score.reshape(len(chunk), -1)[:, 0].float().cpu().numpy()
                amap = (None if out.anomaly_map is None or self.recipe.image_level
                        else out.anomaly_map.reshape(len(chunk), *out.anomaly_map.shape[-2:]))
                for i, image in enumerate(chunk):
                    h, w = image.shape[:2]
                    scores.append(float(pred[i]))
                    if amap is None:
                        maps.append(np.full((h, w), float(pred[i]), dtype=np.float32))
                    else:
                        maps.append(resize_map(amap[i].float().cpu().numpy(), h, w))
        return ScoreResult(np.asarray(scores, dtype=np.float64), maps)

    # ------------------------------------------------------------------ export
    def working_tensor(self, image: np.ndarray) -> torch.Tensor:
        """An RGB uint8 image as the model takes it: [1,3,S,S] in [0,1], S = ``image_size``
        (a square, whatever the aspect ratio: anomalib's stock pre-processing)."""
        return _to_batch([image], int(self.params["image_size"]))

    def resize_rule(self, height: int, width: int) -> str:
        """How a deployment must size an image for an exported file, in words."""
        size = int(self.params["image_size"])
        return (f"resized (bilinear, antialiased) to {size}x{size} whatever the aspect ratio, "
                f"like anomalib's pre-processing; this file takes {height}x{width} only")

    def export_core(self, height: int, width: int) -> torch.nn.Module:
        """anomalib's inference path as one module for ONNX/OpenVINO: ImageNet normalisation
        (the pre-processor's, the resize being done by the caller) and the torch model, with
        raw outputs ``(scores [B], maps [B,1,H,W])``; Kensa's threshold stays outside."""
        if not self.fitted:
            raise RuntimeError(f"{self.name} is not fitted: nothing to export")
        size = int(self.params["image_size"])
        if (height, width) != (size, size):
            raise ValueError(f"{self.name} takes {size}x{size} images, not {height}x{width}")
        return _ExportCore(self.module, size, self.recipe.image_level)

    # ------------------------------------------------------------------ state
    def save(self, directory: Path) -> dict[str, str]:
        """Weights and statistics as safetensors plus ``model.json``, both atomic."""
        from safetensors.torch import save

        if not self.fitted:
            raise RuntimeError("nothing to save: the model has not been fitted")
        directory = Path(directory)
        tensors = {k: v.detach().contiguous().cpu().clone()
                   for k, v in self.module.model.state_dict().items()}
        weights_sha = write_bytes_atomic(directory / WEIGHTS_FILE, save(tensors))
        payload = {"model": self.name, "params": self.params, "kwargs": self.kwargs,
                   "weights_file": WEIGHTS_FILE, "weights_sha256": weights_sha,
                   "anomalib_class": self.recipe.anomalib_class}
        return {WEIGHTS_FILE: weights_sha,
                MODEL_FILE: write_json_atomic(directory / MODEL_FILE, payload)}

    @classmethod
    def load(cls, directory: Path, files: Mapping[str, str] | None = None,
             device: str | None = None) -> AnomalibZooModel:
        """Rebuild the module from ``model.json`` and load its verified weights."""
        directory = Path(directory)
        payload = read_model_json(directory, files, cls.name)
        tensors = read_tensor_file(directory, payload, "weights_file", files)
        try:
            model = cls(dict(require(payload, "params", directory)), device=device)
            model.kwargs = dict(require(payload, "kwargs", directory))
            model.module = model._build(model.kwargs)
            model.module.model.load_state_dict(tensors, strict=True)
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            if isinstance(exc, ModelStateError):
                raise
            raise ModelStateError(f"model state {directory}: {exc}") from None
        model.module.model.to(model.device).eval()
        return model


def _export_core_class() -> type:
    import torch

    class ExportCore(torch.nn.Module):
        """The traced graph: normalize, run anomalib's torch model, return raw outputs."""

        def __init__(self, module: Any, size: int, image_level: bool) -> None:
            super().__init__()
            self.transform = module.pre_processor.transform
            self.model = module.model.eval()
            self.size, self.image_level = size, image_level
            self.input_shape = (3, size, size)

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(self.transform(images))
            scores = out.pred_score.reshape(images.shape[0], -1)[:, :1].reshape(-1)
            if self.image_level or out.anomaly_map is None:
                maps = scores.reshape(-1, 1, 1, 1).expand(-1, 1, self.size, self.size)
            else:
                maps = out.anomaly_map.reshape(images.shape[0], 1, *out.anomaly_map.shape[-2:])
            return scores, maps

    return ExportCore


def _ExportCore(module: Any, size: int, image_level: bool) -> Any:  # noqa: N802
    return _export_core_class()(module, size, image_level)


class _Images:
    """A map-style dataset over a ready tensor (one process: the images are in memory)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


def _collate(items: list[torch.Tensor]) -> Any:
    """anomalib models read ``batch.image``; good images only, so every label is 0."""
    import torch
    from anomalib.data import ImageBatch

    images = torch.stack(items)
    return ImageBatch(image=images, gt_label=torch.zeros(len(items), dtype=torch.long))


def _progress_callback() -> type:
    from lightning.pytorch import Callback

    class Progress(Callback):
        """Per batch and per epoch progress; a progress function that raises (Cancel) stops
        the training, which Lightning tears down and re-raises."""

        def __init__(self, progress: ProgressFn | None, epochs: int, batches: int) -> None:
            self.progress, self.epochs, self.batches = progress, epochs, max(1, batches)

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if self.progress:
                done = trainer.current_epoch + (batch_idx + 1) / self.batches
                stage = ("extracting features" if self.epochs == 1
                         else f"epoch {trainer.current_epoch + 1} of {self.epochs}")
                self.progress(stage, 0.95 * done / self.epochs)

    return Progress


def _Progress(progress: ProgressFn | None, epochs: int, batches: int) -> Any:  # noqa: N802
    return _progress_callback()(progress, epochs, batches)


#: an epoch "improves" the training loss when it lowers it by at least this fraction
MIN_IMPROVEMENT = 1e-3


def _plateau_callback() -> type:
    from lightning.pytorch import Callback

    class Plateau(Callback):
        """Early stopping on a RELATIVE improvement of the training loss.

        Lightning's ``EarlyStopping`` compares against an absolute ``min_delta``; these losses
        range from ~1 (DRAEM) to ~1e5 (CFlow's negative log-likelihood), and CFlow's keeps
        creeping down by a few parts in 1e5 per epoch long after it has learnt what it will,
        so no one absolute delta (0 included) means "stopped learning" for every model.
        """

        def __init__(self, patience: int) -> None:
            self.patience, self.best, self.wait = patience, None, 0

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            loss = trainer.callback_metrics.get("train_loss")
            if loss is None:
                return
            value = float(loss)
            if self.best is None or value < self.best - MIN_IMPROVEMENT * abs(self.best):
                self.best, self.wait = value, 0
                return
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True

    return Plateau


def _Plateau(patience: int) -> Any:  # noqa: N802
    return _plateau_callback()(patience)


class AnomalibPadim(AnomalibZooModel):
    name = "anomalib_padim"


class AnomalibDfm(AnomalibZooModel):
    name = "anomalib_dfm"


class AnomalibDfkde(AnomalibZooModel):
    name = "anomalib_dfkde"


class AnomalibCflow(AnomalibZooModel):
    name = "anomalib_cflow"


class AnomalibDraem(AnomalibZooModel):
    name = "anomalib_draem"


# ---------------------------------------------------------------------- network-only models
@dataclass(frozen=True)
class NetworkNeed:
    """Why an anomalib class cannot run offline here (shown to the user as is)."""

    anomalib_class: str
    needs: str


NETWORK_ONLY: dict[str, NetworkNeed] = {
    "anomalib_reverse_distillation": NetworkNeed(
        "ReverseDistillation", "its decoder mirrors a ResNet, whose ImageNet weights come from "
                               "the timm hub (no bundled ResNet)"),
    "anomalib_stfpm": NetworkNeed("Stfpm", "its teacher network always loads ImageNet weights "
                                           "from the timm hub"),
    "anomalib_fastflow": NetworkNeed("Fastflow", "it supports ResNet, CaiT and DeiT backbones "
                                                 "only, whose weights come from the timm hub"),
    "anomalib_efficient_ad": NetworkNeed("EfficientAd", "it downloads pretrained teacher "
                                                        "weights and the ImageNette images"),
    "anomalib_csflow": NetworkNeed("Csflow", "it uses EfficientNet-B5 weights from the timm hub"),
    "anomalib_cfa": NetworkNeed("Cfa", "its backbones (ResNet, Wide ResNet) load weights from "
                                       "the timm hub"),
    "anomalib_winclip": NetworkNeed("WinClip", "it downloads the CLIP model"),
    "anomalib_dinomaly": NetworkNeed("Dinomaly", "it downloads DINOv2 weights"),
    "anomalib_supersimplenet": NetworkNeed("Supersimplenet", "its Wide ResNet backbone loads "
                                                            "weights from the timm hub"),
}


class NetworkRequiredError(ValueError):
    """The model's anomalib class downloads something and this computer is offline."""


class NetworkOnlyZooModel(AnomalibZooModel):
    """An anomalib model with its stock (downloading) settings, offered with network access.

    It trains and scores through the same adapter; offline it refuses at request time, in
    one sentence, instead of failing minutes later inside a download retry loop.
    """

    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        check_common(params, trained=True)
        need = NETWORK_ONLY[cls.name]
        if not hub_reachable():
            raise NetworkRequiredError(
                f"{need.anomalib_class} needs network access: {need.needs}. This computer "
                "cannot reach the internet; choose a model that works offline (Kensa "
                "PatchCore, PaDiM, DFM, DFKDE, CFlow, DRAEM or stock PatchCore).")

    def __init__(self, params: Mapping[str, Any], device: str | None = None) -> None:
        from engine.device import pick_device

        self.validate_params(params)
        self.recipe = Recipe(NETWORK_ONLY[self.name].anomalib_class,
                             lambda p, n: {}, trained=True)
        self.params = {**self.defaults(), **params}
        self.device = pick_device(device)
        self.module = None
        self.kwargs = {}

    def _build(self, kwargs: Mapping[str, Any]) -> Any:
        cls = getattr(importlib.import_module("anomalib.models"), self.recipe.anomalib_class)
        size = int(self.params["image_size"])
        return cls(**kwargs, pre_processor=cls.configure_pre_processor(image_size=(size, size)),
                   post_processor=False, evaluator=False, visualizer=False)


class OnlineReverseDistillation(NetworkOnlyZooModel):
    name = "anomalib_reverse_distillation"


class OnlineStfpm(NetworkOnlyZooModel):
    name = "anomalib_stfpm"


class OnlineFastflow(NetworkOnlyZooModel):
    name = "anomalib_fastflow"


class OnlineEfficientAd(NetworkOnlyZooModel):
    name = "anomalib_efficient_ad"


class OnlineCsflow(NetworkOnlyZooModel):
    name = "anomalib_csflow"


class OnlineCfa(NetworkOnlyZooModel):
    name = "anomalib_cfa"


class OnlineWinClip(NetworkOnlyZooModel):
    name = "anomalib_winclip"


class OnlineDinomaly(NetworkOnlyZooModel):
    name = "anomalib_dinomaly"


class OnlineSupersimplenet(NetworkOnlyZooModel):
    name = "anomalib_supersimplenet"

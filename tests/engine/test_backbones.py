"""Bundled ImageNet weights really load (a cat is a cat) and online backbones fail clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data

from engine import backbones
from engine.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneUnavailableError,
    build_classifier,
    build_feature_extractor,
    get_spec,
)

EGYPTIAN_CAT = 285
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _predict(model: torch.nn.Module, image) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    with torch.inference_mode():
        return model(x).softmax(-1)[0]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_bundled_weights_classify_imagenet_images(name: str) -> None:
    model = build_classifier(name)
    cat = _predict(model, data.chelsea())
    assert int(cat.argmax()) in CAT_CLASSES
    assert int(_predict(model, data.coffee()).argmax()) == ESPRESSO


def test_lite0_chelsea_is_egyptian_cat() -> None:
    probs = _predict(build_classifier("efficientnet_lite0"), data.chelsea())
    assert int(probs.argmax()) == EGYPTIAN_CAT
    assert float(probs.max()) > 0.4


def test_feature_extractor_strides_and_channels() -> None:
    net = build_feature_extractor("efficientnet_lite0")
    fine, coarse = net(torch.zeros(1, 3, 128, 96))
    assert fine.shape == (1, 40, 16, 12)
    assert coarse.shape == (1, 112, 8, 6)


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        get_spec("vgg_nope")


def test_online_backbone_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline (the probe fails) the hub is not retried for a minute; the message says why."""
    monkeypatch.setattr(backbones, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-kensa-cache")
    with pytest.raises(BackboneUnavailableError, match="offline.*efficientnet_lite0"):
        build_feature_extractor("resnet18")

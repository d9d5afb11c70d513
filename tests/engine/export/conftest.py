"""A small fitted Kensa model and generated validation images, shared by the export tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine.models.fewshot import FewShotConfig, FewShotPatchCore
from engine.thresholds import mean_k_sigma
from tests.synthetic import texture, with_defect

#: 120 x 96 images at image_size 96 -> a 96 x 80 working size (a non-square 12 x 10 grid)
HEIGHT, WIDTH, SIZE = 120, 96, 96


@dataclass
class Fitted:
    model: FewShotPatchCore
    images: list[np.ndarray]
    names: list[str]
    batch: torch.Tensor
    threshold: float
    normal_scores: np.ndarray
    #: model.score of ``images``: what the app says
    app_scores: np.ndarray


def crop(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:HEIGHT, :WIDTH])


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fitted_model(config: FewShotConfig, seed: int = 0) -> Fitted:
    """Fit on 3 generated goods; 3 held-out goods + 3 defects; threshold mean + 3 sigma."""
    rng = np.random.default_rng(seed)
    model = FewShotPatchCore(config, device="cpu")
    model.fit([crop(texture(rng, HEIGHT)) for _ in range(3)])
    goods = [crop(texture(rng, HEIGHT)) for _ in range(3)]
    defects = [crop(with_defect(rng, texture(rng, HEIGHT))[0]) for _ in range(3)]
    images = goods + defects
    names = [f"good_{i}.png" for i in range(3)] + [f"defect_{i}.png" for i in range(3)]
    good_scores = model.score(goods).scores
    threshold = mean_k_sigma(good_scores).value
    batch = torch.cat([model.working_tensor(im) for im in images])
    return Fitted(model, images, names, batch, threshold, good_scores,
                  model.score(images).scores)


@pytest.fixture(scope="session")
def fitted() -> Fitted:
    return fitted_model(FewShotConfig(image_size=SIZE))


def larger_than_shots(seed: int = 3) -> Fitted:
    """Shots cropped to 80 x 64, validation images of 120 x 96: worked above image_size, so
    scoring adds the coarse view (``FewShotConfig.coarse_map``); threshold mean + 3 sigma of
    the two goods."""
    rng = np.random.default_rng(seed)
    model = FewShotPatchCore(FewShotConfig(image_size=SIZE), device="cpu")
    model.fit([crop(texture(rng, HEIGHT))[:80, :64] for _ in range(3)])
    goods = [crop(texture(rng, HEIGHT)) for _ in range(2)]
    images = goods + [crop(with_defect(rng, texture(rng, HEIGHT))[0]) for _ in range(2)]
    good_scores = model.score(goods).scores
    batch = torch.cat([model.working_tensor(im) for im in images])
    return Fitted(model, images, ["good_0.png", "good_1.png", "defect_0.png", "defect_1.png"],
                  batch, mean_k_sigma(good_scores).value, good_scores,
                  model.score(images).scores)

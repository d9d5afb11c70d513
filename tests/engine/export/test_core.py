"""InferenceCore against the app's own scoring (``model.score``): the same numbers, so a change
of the app's pipeline that the core does not follow fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.export.core import InferenceCore, blur_matrix
from engine.models.fewshot import FewShotConfig
from engine.models.preprocess import resize_map
from tests.engine.export.conftest import SIZE, Fitted, fitted_model, larger_than_shots


def _check(fitted: Fitted) -> None:
    model = fitted.model
    expected = model.score(fitted.images)
    core = InferenceCore.from_model(model, *fitted.batch.shape[-2:])
    with torch.no_grad():
        scores, maps = core(fitted.batch)
    assert maps.shape == (len(fitted.images), 1, *fitted.batch.shape[-2:])
    np.testing.assert_allclose(scores.numpy(), expected.scores, rtol=2e-5, atol=1e-5)
    for image, work, want in zip(fitted.images, maps[:, 0].numpy(), expected.maps, strict=True):
        got = resize_map(work, *image.shape[:2])
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(want.max()))


def test_core_matches_model_score(fitted: Fitted) -> None:
    assert fitted.batch.shape[-2:] != (SIZE, SIZE)  # a non-square working size
    _check(fitted)


def test_core_matches_grey_knn_and_no_intensity_matching() -> None:
    """Other branches of scoring: grey input, 3 neighbours averaged, no intensity matching,
    a different blur."""
    config = FewShotConfig(image_size=SIZE, colour="gray", n_neighbors=3,
                           match_intensity=False, blur_sigma=2.5)
    fitted = fitted_model(config, seed=1)
    assert fitted.model.state.gray
    _check(fitted)


@pytest.mark.parametrize("options", [
    {"normalization": "batch"},
    {"normalization": "batch", "fine_weight": 0.5},
    {"style_align": True, "normalization": "layer", "match_intensity": False},
    {"style_align": True, "normalization": "batch", "n_neighbors": 2},
])
def test_core_matches_the_feature_alignment(options: dict) -> None:
    """``normalization="batch"`` and ``style_align`` (issue 14): the training statistics
    travel as buffers and the core aligns every image of a batch on its own, as scoring does."""
    fitted = fitted_model(FewShotConfig(image_size=SIZE, **options), seed=2)
    core = InferenceCore.from_model(fitted.model, *fitted.batch.shape[-2:])
    stats = fitted.model.state.feature_stats
    assert stats is not None and core.alignment is not None
    buffers = dict(core.named_buffers())
    assert torch.equal(buffers["alignment.ref_mean"].view(-1), stats.mean)
    assert torch.equal(buffers["alignment.ref_std"].view(-1), stats.std)
    _check(fitted)


def test_core_matches_a_bank_without_the_stride8_block() -> None:
    """``fine_weight=0``: 112 channels, the extractor's output shorter than its network's."""
    fitted = fitted_model(FewShotConfig(image_size=SIZE, fine_weight=0.0), seed=4)
    assert fitted.model.bank is not None and fitted.model.bank.dim == 112
    _check(fitted)


def test_core_matches_the_coarse_view_of_a_larger_image(fitted: Fitted) -> None:
    """Images larger than the shots are worked above ``image_size``, so scoring averages a
    coarse map into theirs, and so must the graph."""
    larger = larger_than_shots()
    assert max(larger.batch.shape[-2:]) > SIZE
    core = InferenceCore.from_model(larger.model, *larger.batch.shape[-2:])
    assert core.coarse == larger.model.coarse_shape(*larger.batch.shape[-2:]) is not None
    _check(larger)
    # images of the shots' size are worked at image_size: no coarse view in the graph
    plain = InferenceCore.from_model(fitted.model, *fitted.batch.shape[-2:])
    assert plain.coarse is None and "shrink_rows" not in dict(plain.named_buffers())


def test_a_model_without_alignment_has_no_alignment_in_its_graph(fitted: Fitted) -> None:
    core = InferenceCore.from_model(fitted.model, *fitted.batch.shape[-2:])
    assert core.alignment is None
    assert not any(name.startswith("alignment") for name, _ in core.named_buffers())


def test_bank_is_a_buffer_and_the_size_is_checked(fitted: Fitted) -> None:
    core = InferenceCore.from_model(fitted.model, 96, 80)
    assert "bank" in dict(core.named_buffers())
    assert torch.equal(core.bank, fitted.model.bank.vectors.cpu())
    with pytest.raises(ValueError, match="multiples of 8"):
        InferenceCore.from_model(fitted.model, 100, 80)


def test_the_core_owns_its_bank(fitted: Fitted) -> None:
    """Changing the graph's bank (as a test of a mismatching export does) leaves the app's
    model and its scores as they were."""
    before = fitted.model.bank.vectors.clone()
    core = InferenceCore.from_model(fitted.model, *fitted.batch.shape[-2:])
    core.bank.mul_(1.02)
    assert torch.equal(fitted.model.bank.vectors, before)
    np.testing.assert_array_equal(fitted.model.score(fitted.images).scores, fitted.app_scores)


def test_blur_matrix_is_opencv_gaussian_blur() -> None:
    """Rows of the blur operator applied to a random signal = cv2 on the same signal (the
    kernel size, kernel and reflect-101 border all come from OpenCV)."""
    import cv2

    signal = np.random.default_rng(0).random((50, 1)).astype(np.float32)
    want = cv2.GaussianBlur(signal, (0, 0), 4.0)[:, 0]
    np.testing.assert_allclose(blur_matrix(50, 4.0) @ signal[:, 0], want, atol=1e-6)
    assert np.array_equal(blur_matrix(7, 0.0), np.eye(7))

"""Stock anomalib PatchCore behind the contract: save, load (verified), same scores; and the
weight check that keeps it from silently scoring with random backbone weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engine.models.anomalib_patchcore as stock
from engine.backbones import BackboneUnavailableError
from engine.models import StateIntegrityError, registry
from tests.synthetic import texture, with_defect


@pytest.fixture(scope="module")
def fitted() -> stock.AnomalibPatchCore:
    rng = np.random.default_rng(5)
    model = registry.create("anomalib_patchcore")
    model.fit([texture(rng, 64) for _ in range(2)])
    return model


def test_save_load_round_trip_scores_identically(fitted: stock.AnomalibPatchCore,
                                                 tmp_path: Path) -> None:
    files = fitted.save(tmp_path)
    assert set(files) == {"model.json", stock.BANK_FILE}
    loaded = registry.load("anomalib_patchcore", tmp_path, files=files)
    assert (loaded.vector_count, loaded.dim) == (fitted.vector_count, fitted.dim) != (0, 0)
    rng = np.random.default_rng(9)
    images = [with_defect(rng, texture(rng, 64))[0], texture(rng, 64)]
    np.testing.assert_allclose(loaded.score(images).scores, fitted.score(images).scores,
                               rtol=1e-5)


def test_a_changed_state_file_is_refused(fitted: stock.AnomalibPatchCore,
                                         tmp_path: Path) -> None:
    files = fitted.save(tmp_path)
    (tmp_path / "model.json").write_text((tmp_path / "model.json").read_text()
                                         .replace("0.1", "0.5"))
    with pytest.raises(StateIntegrityError, match="model.json"):
        registry.load("anomalib_patchcore", tmp_path, files=files)


def test_weights_that_leave_backbone_keys_unset_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = stock.load_imagenet_state_dict

    def missing_first_stage(spec):  # type: ignore[no-untyped-def]
        return {k: v for k, v in real(spec).items() if not k.startswith("conv_stem")}

    monkeypatch.setattr(stock, "load_imagenet_state_dict", missing_first_stage)
    with pytest.raises(BackboneUnavailableError, match="conv_stem.weight"):
        stock.AnomalibPatchCore()

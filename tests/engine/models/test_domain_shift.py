"""Domain-shift options of the default model (issue 14): ``normalization="batch"`` and
``style_align`` keep the training patches' statistics, apply them to every scored image, store
them as a verified state file, keep them through updates, and refuse bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models import ModelStateError, StateIntegrityError, registry
from engine.models.fewshot import STATS_FILE, FewShotConfig, FewShotPatchCore
from tests.synthetic import texture

SMALL = {"image_size": 96, "views": "none", "max_bank": 100}


@pytest.fixture(scope="module")
def shots() -> list[np.ndarray]:
    rng = np.random.default_rng(21)
    return [texture(rng) for _ in range(3)]


@pytest.fixture(scope="module")
def goods() -> list[np.ndarray]:
    rng = np.random.default_rng(22)
    return [texture(rng) for _ in range(3)]


@pytest.fixture(scope="module")
def both(shots: list[np.ndarray]) -> FewShotPatchCore:
    model = FewShotPatchCore(FewShotConfig(**SMALL, normalization="batch", style_align=True))
    model.fit(shots)
    return model


def _dimmer(image: np.ndarray, gain: float = 0.6) -> np.ndarray:
    """The same part under a weaker lamp: every pixel scaled (no clipping at 0.6)."""
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _rise(model: FewShotPatchCore, goods: list[np.ndarray]) -> float:
    """How much dimming raises good parts' scores, relative to their unchanged scores."""
    plain = model.score(goods).scores
    dimmed = model.score([_dimmer(g) for g in goods]).scores
    return float(np.mean(np.abs(dimmed - plain) / plain))


def test_stats_are_of_every_training_patch_before_the_coreset(shots: list[np.ndarray]) -> None:
    model = FewShotPatchCore(FewShotConfig(**SMALL, normalization="batch"))
    model.fit(shots)
    raw = torch.cat([model.extractor(model._prepare(model.working_tensor(s)))[0].flatten(1).T
                     for s in shots])
    stats = model.state.feature_stats
    assert stats is not None and len(model.bank) == 100 < raw.shape[0]  # a coreset was taken
    torch.testing.assert_close(stats.mean, raw.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stats.std, raw.std(0, unbiased=False), atol=1e-3, rtol=1e-3)
    assert FewShotPatchCore(FewShotConfig(**SMALL)).state.feature_stats is None


@pytest.mark.parametrize("options", [{"style_align": True},
                                     {"normalization": "batch", "style_align": True}])
def test_a_dimmer_good_part_scores_closer_to_itself_with_style_alignment(
        shots: list[np.ndarray], goods: list[np.ndarray], options: dict) -> None:
    """Without intensity matching (the input-level fix, on by default) the dimmer lamp moves
    good scores; aligning each image's feature statistics to the training ones moves them
    less."""
    plain = FewShotPatchCore(FewShotConfig(**SMALL, match_intensity=False))
    plain.fit(shots)
    aligned = FewShotPatchCore(FewShotConfig(**SMALL, match_intensity=False, **options))
    aligned.fit(shots)
    assert _rise(aligned, goods) < 0.5 * _rise(plain, goods)


def test_batch_standardizes_the_raw_features_with_the_training_stats(
        shots: list[np.ndarray], goods: list[np.ndarray]) -> None:
    """Every scored image goes through the same fixed per-channel map, whatever its light; the
    stride-8 block then gets its ``fine_weight`` back (standardizing divided it out)."""
    model = FewShotPatchCore(FewShotConfig(**SMALL, normalization="batch"))
    model.fit(shots)
    stats = model.state.feature_stats
    gain = model.extractor.channel_gain()
    assert stats is not None and gain is not None
    raw = model.extractor(model._prepare(model.working_tensor(goods[0])))
    want = (raw - stats.mean.view(1, -1, 1, 1)) / stats.std.view(1, -1, 1, 1) * gain.view(
        1, -1, 1, 1)
    torch.testing.assert_close(model._features(model.working_tensor(goods[0])), want)


def test_a_training_image_scored_again_meets_its_own_vectors(shots: list[np.ndarray]) -> None:
    """The bank's views are aligned as scored images are, so the full bank (views "none",
    no coreset) holds every patch of a shot exactly."""
    model = FewShotPatchCore(FewShotConfig(image_size=96, views="none", normalization="batch",
                                           style_align=True))
    model.fit(shots)
    assert model.score(shots[:1]).scores[0] == pytest.approx(0.0, abs=1e-3)


def test_round_trip_keeps_the_stats_and_verifies_them(both: FewShotPatchCore, tmp_path: Path,
                                                      goods: list[np.ndarray]) -> None:
    files = both.save(tmp_path)
    assert set(files) == {"model.json", "bank.safetensors", STATS_FILE}
    loaded = registry.load("kensa_patchcore", tmp_path, files=files)
    assert loaded.config.style_align and loaded.config.normalization == "batch"
    for got, want in zip(loaded.state.feature_stats, both.state.feature_stats, strict=True):
        assert torch.equal(got, want)
    np.testing.assert_allclose(loaded.score(goods).scores, both.score(goods).scores, rtol=1e-6)
    payload = json.loads((tmp_path / "model.json").read_text())
    assert payload["stats_file"] == STATS_FILE and payload["stats_sha256"] == files[STATS_FILE]


@pytest.mark.parametrize("with_manifest", [True, False])
def test_altered_stats_are_refused(both: FewShotPatchCore, tmp_path: Path,
                                   with_manifest: bool) -> None:
    """With or without the manifest (model.json records the sha256 too)."""
    files = both.save(tmp_path)
    path = tmp_path / STATS_FILE
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one bit of one std
    path.write_bytes(bytes(raw))
    with pytest.raises(StateIntegrityError, match="feature_stats.safetensors.*expected sha256"):
        registry.load("kensa_patchcore", tmp_path, files=files if with_manifest else None)


def test_a_state_without_its_stats_is_one_clear_error(both: FewShotPatchCore,
                                                      tmp_path: Path) -> None:
    both.save(tmp_path)
    (tmp_path / STATS_FILE).unlink()
    with pytest.raises(ModelStateError, match="feature_stats.safetensors is missing"):
        registry.load("kensa_patchcore", tmp_path)
    payload = json.loads((tmp_path / "model.json").read_text())
    payload.pop("stats_file")
    (tmp_path / "model.json").write_text(json.dumps(payload))
    with pytest.raises(ModelStateError, match="names no stats_file") as err:
        registry.load("kensa_patchcore", tmp_path)
    assert "\n" not in str(err.value)


def test_an_old_state_without_the_new_keys_loads_as_before(shots: list[np.ndarray],
                                                           tmp_path: Path) -> None:
    model = FewShotPatchCore(FewShotConfig(**SMALL))
    model.fit(shots)
    files = model.save(tmp_path)
    assert STATS_FILE not in files and not (tmp_path / STATS_FILE).exists()
    payload = json.loads((tmp_path / "model.json").read_text())
    payload["config"].pop("style_align")  # written before issue 14
    (tmp_path / "model.json").write_text(json.dumps(payload))
    loaded = registry.load("kensa_patchcore", tmp_path, files={
        "bank.safetensors": files["bank.safetensors"]})
    assert loaded.config.style_align is False and loaded.state.feature_stats is None
    assert loaded.feature_alignment() is None
    np.testing.assert_allclose(loaded.score(shots[:1]).scores, model.score(shots[:1]).scores,
                               rtol=1e-6)


def test_update_keeps_the_stats_of_the_first_fit(both: FewShotPatchCore,
                                                 goods: list[np.ndarray]) -> None:
    dark = [_dimmer(g, 0.4) for g in goods]  # new goods of other statistics
    grown = both.update(dark).model
    assert grown.state.feature_stats is both.state.feature_stats
    # new vectors enter through the first fit's alignment, as the old model would embed them
    vectors = grown.embed([grown.working_tensor(dark[0])], [(0, False)])[0]
    old = both.embed([both.working_tensor(dark[0])], [(0, False)])[0]
    torch.testing.assert_close(vectors, old)


@pytest.mark.parametrize(("params", "message"), [
    ({"normalization": "group"}, "normalization must be none, instance, layer or batch"),
    ({"style_align": "yes"}, "style_align must be true or false"),
    ({"style_align": 1}, "style_align must be true or false"),
    ({"normalization": "instance", "style_align": True}, "style_align does nothing"),
])
def test_bad_settings_are_one_line_errors(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        registry.validate("kensa_patchcore", params)
    assert "\n" not in str(err.value)


def test_the_registry_offers_both_options_off_by_default() -> None:
    defaults = registry.spec("kensa_patchcore").default_config
    assert defaults["style_align"] is False and defaults["normalization"] == "none"
    config = registry.validate("kensa_patchcore", {"normalization": "batch",
                                                   "style_align": True})
    assert config["normalization"] == "batch" and config["style_align"] is True

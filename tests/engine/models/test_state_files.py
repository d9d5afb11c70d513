"""Saved states: every file verified on load (model.json too), clear one-line errors, and
provenance records per (image, view) that fit and update number from ``first_id``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.models import (
    Capability,
    ImageSource,
    ModelStateError,
    StateIntegrityError,
    registry,
)
from engine.models.fewshot import FewShotPatchCore
from tests.synthetic import texture

PARAMS = {"image_size": 96, "views": "flips", "max_bank": 100}


@pytest.fixture(scope="module")
def shots() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [texture(rng) for _ in range(3)]


@pytest.fixture(scope="module")
def fitted(shots: list[np.ndarray]) -> FewShotPatchCore:
    model = registry.create("kensa_patchcore", **PARAMS)
    model.fit(shots, sources=[ImageSource(f"/data/good_{i}.png", f"{i:064x}")
                              for i in range(len(shots))])
    return model


@pytest.fixture
def saved(fitted: FewShotPatchCore, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path, fitted.save(tmp_path)


def test_fit_issues_one_record_per_image_and_view_even_without_vectors(
        fitted: FewShotPatchCore) -> None:
    records = fitted.records
    assert [r.id for r in records] == list(range(3 * 4))  # 3 shots x 4 flip views
    assert [r.view for r in records[:4]] == ["rot0", "rot0+flip", "rot180", "rot180+flip"]
    assert {r.path for r in records} == {f"/data/good_{i}.png" for i in range(3)}
    assert records[5].sha256 == f"{1:064x}" and (records[5].height, records[5].grid_width) == (
        96, 12)
    # the coreset (max_bank=100 of 3 x 4 x 144 patches) drops some records' vectors entirely,
    # yet every record is kept: ids are issued, not derived from what survived
    used = set(fitted.bank.provenance[:, 0].tolist())
    assert used <= {r.id for r in records}


def test_update_numbers_from_first_id_and_returns_a_new_model(
        fitted: FewShotPatchCore, shots: list[np.ndarray]) -> None:
    rng = np.random.default_rng(11)
    before = fitted.bank
    novel = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)  # unlike any shot: must enter
    grown = fitted.update([novel], [ImageSource("/new/a.png", "ab" * 32)], first_id=40)
    assert fitted.bank is before and len(fitted.records) == 12  # the old model is untouched
    assert [r.id for r in grown.records] == [40, 41, 42, 43]
    assert {r.path for r in grown.records} == {"/new/a.png"}
    assert [r.id for r in grown.model.records] == [*range(12), 40, 41, 42, 43]
    new_ids = set(grown.model.bank.provenance[:, 0].tolist()) - set(range(12))
    assert grown.added > 0 and new_ids and new_ids <= {40, 41, 42, 43}
    with pytest.raises(ValueError, match="already used"):
        fitted.update([texture(rng)], first_id=10)


def test_round_trip_with_manifest_keeps_records_and_scores(
        fitted: FewShotPatchCore, saved: tuple[Path, dict[str, str]],
        shots: list[np.ndarray]) -> None:
    directory, files = saved
    assert set(files) == {"model.json", "bank.safetensors"}
    loaded = registry.load("kensa_patchcore", directory, files=files)
    assert loaded.records == fitted.records
    assert Capability.NEAREST_PATCHES in loaded.capabilities
    np.testing.assert_allclose(loaded.score(shots[:1]).scores, fitted.score(shots[:1]).scores,
                               rtol=1e-5)


def test_an_edited_model_json_is_refused(saved: tuple[Path, dict[str, str]]) -> None:
    directory, files = saved
    payload = json.loads((directory / "model.json").read_text())
    payload["config"]["blur_sigma"] = 0.0  # would silently change every score
    (directory / "model.json").write_text(json.dumps(payload))
    with pytest.raises(StateIntegrityError) as err:
        registry.load("kensa_patchcore", directory, files=files)
    message = str(err.value)
    assert "model.json" in message and files["model.json"] in message and "actual" in message


def test_a_changed_bank_is_refused_naming_the_file(saved: tuple[Path, dict[str, str]]) -> None:
    directory, files = saved
    bank = directory / "bank.safetensors"
    bank.write_bytes(bank.read_bytes()[:-1] + b"\x00")
    with pytest.raises(StateIntegrityError, match="bank.safetensors.*expected sha256"):
        registry.load("kensa_patchcore", directory, files=files)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p.pop("config"), "lacks the key 'config'"),
    (lambda p: p["config"].update(flavour=1), "unknown training parameter.*flavour"),
    (lambda p: p.pop("bank_file"), "lacks the key 'bank_file'"),
    (lambda p: p.update(model="anomalib_patchcore"), "holds a 'anomalib_patchcore' state"),
    (lambda p: p["records"][0].pop("sha256"), "model description .*model.json"),
])
def test_malformed_model_json_is_one_clear_error(saved: tuple[Path, dict[str, str]], edit,
                                                  message: str) -> None:
    directory, _ = saved
    payload = json.loads((directory / "model.json").read_text())
    edit(payload)
    (directory / "model.json").write_text(json.dumps(payload))
    with pytest.raises(ModelStateError, match=message) as err:
        registry.load("kensa_patchcore", directory)  # no manifest: the parse itself must say
    assert "\n" not in str(err.value)


def test_old_model_json_layout_still_loads(fitted: FewShotPatchCore,
                                           saved: tuple[Path, dict[str, str]]) -> None:
    """model.json written before provenance records: one id per image, views shared."""
    directory, files = saved
    payload = json.loads((directory / "model.json").read_text())
    for key in ("records", "n_shots", "format_version"):
        payload.pop(key)
    payload["images"] = [{"name": f"image_{i}", "height": 96, "width": 96, "grid_height": 12,
                          "grid_width": 12} for i in range(3)]
    (directory / "model.json").write_text(json.dumps(payload))
    loaded = FewShotPatchCore.load(directory, files={"bank.safetensors":
                                                     files["bank.safetensors"]})
    assert [(r.id, r.path, r.view) for r in loaded.records] == [
        (i, f"image_{i}", "all") for i in range(3)]
    assert loaded.state.n_shots == 3 and len(loaded.bank) == len(fitted.bank)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelStateError, match="model.json is missing"):
        registry.load("kensa_patchcore", tmp_path)


def test_a_pre_0004_bank_version_loads_from_its_manifest(
        fitted: FewShotPatchCore, saved: tuple[Path, dict[str, str]]) -> None:
    """Migrated rows list only their bank, e.g. ``banks/<uuid>.safetensors`` beside the first
    version's model.json: that bank is the one loaded (verified), not model.json's."""
    directory, files = saved
    (directory / "banks").mkdir()
    (directory / "bank.safetensors").rename(directory / "banks" / "u.safetensors")
    loaded = registry.load("kensa_patchcore", directory,
                           files={"banks/u.safetensors": files["bank.safetensors"]})
    assert len(loaded.bank) == len(fitted.bank)
    with pytest.raises(StateIntegrityError, match="u.safetensors"):
        registry.load("kensa_patchcore", directory, files={"banks/u.safetensors": "0" * 64})

"""Training with a preset's augmented copies: recorded in the run, fitted, written as files that
provenance points at, and the few-shot view rule still counting only the real shots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import db.repositories as repo
from engine.augment import validate_config
from engine.data import discover, load_image, sha256_file
from engine.models.augment_views import views_for
from services.augmentation.presets import mark_for_training, save_preset
from services.context import Kensa
from services.history.provenance import provenance
from services.training.fit import AUGMENTED_COPIES, TrainingInputError, train_model
from services.training.project import (
    AUGMENTED_DIR,
    get_model_version,
    request_training,
    run_training,
)
from services.training.setup import augmentation_words, training_setup
from tests.services.conftest import PARAMS
from tests.synthetic import make_mvtec

CONFIG = validate_config({"version": 1, "seed": 5, "transforms": [
    {"name": "RandomBrightnessContrast", "p": 1.0},
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "PerlinDefect", "p": 1.0},  # left out of training copies by the engine
]})


def _augmentation(copies: int = 2) -> dict[str, Any]:
    return {"preset": "light", "preset_id": 1, "copies": copies, "config": CONFIG.to_json()}


def test_copies_grow_the_fit_keep_the_view_rule_and_point_at_their_files(tmp_path: Path) -> None:
    index = discover(make_mvtec(tmp_path / "parts", n_train=5, n_test_good=1, n_defect=1))
    plain = train_model(index, shots=3, params=PARAMS)
    out = tmp_path / "augmented"
    grown = train_model(index, shots=3, params=PARAMS, augmentation=_augmentation(2),
                        augmented_dir=out)
    assert plain.shots == grown.shots  # same seed, same shots
    assert (plain.fit.n_images, grown.fit.n_images) == (3, 9)
    assert grown.fit.n_patches == 3 * plain.fit.n_patches
    assert grown.model.vector_count > plain.model.vector_count
    assert grown.augmentation == {"preset": "light", "copies": 2, "augmented_images": 6}
    # 3 shots: every view of the auto rule, as without copies (9 images would get fewer)
    views = views_for("auto", 3)
    assert grown.model.state.n_shots == 3 and views != views_for("auto", 9)
    assert len(grown.model.records) == 9 * len(views)

    copies = [s for s in grown.sources if s.augmented]
    assert len(copies) == 6 and sorted(p.name for p in out.iterdir()) == sorted(
        Path(s.path).name for s in copies)
    for source in copies:  # the file holds exactly the pixels the model learned from
        assert sha256_file(source.path) == source.sha256
    on_copies = [r for r in grown.model.records if Path(r.path).parent == out]
    assert len(on_copies) == 6 * len(views)
    assert {(r.path, r.sha256) for r in on_copies} == {(s.path, s.sha256) for s in copies}
    # a copy differs from its shot (brightness/contrast at p=1) but has its size
    first_shot = load_image(grown.shots[0])
    first_copy = load_image(copies[0].path)
    assert first_copy.shape == first_shot.shape and not np.array_equal(first_copy, first_shot)


def test_copies_are_capped_and_spread_over_the_shots(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import services.training.fit as fit

    monkeypatch.setattr(fit, "MAX_AUGMENTED", 4)  # 5 shots x 2 copies would be 10
    index = discover(make_mvtec(tmp_path / "parts", n_train=6, n_test_good=1, n_defect=1))
    grown = train_model(index, shots=5, params=PARAMS, augmentation=_augmentation(2),
                        augmented_dir=tmp_path / "augmented")
    assert grown.augmentation == {"preset": "light", "copies": 2, "augmented_images": 4}
    assert grown.fit.n_images == 9
    copied = sorted({Path(s.path).name.split("_aug")[0] for s in grown.sources if s.augmented})
    stems = [Path(p).stem for p in grown.shots]
    assert copied == [f"0000_{stems[0]}", f"0001_{stems[-1]}"]  # the first and the last shot


def test_a_broken_recorded_config_is_refused_by_name(tmp_path: Path) -> None:
    index = discover(make_mvtec(tmp_path / "parts", n_train=3, n_test_good=1, n_defect=1))
    broken = {**_augmentation(), "config": {"version": 1, "seed": 0,
                                            "transforms": [{"name": "Nope"}]}}
    with pytest.raises(TrainingInputError, match=r"params\.augmentation\.config.*'light'"):
        train_model(index, augmentation=broken, augmented_dir=tmp_path / "a")
    with pytest.raises(TrainingInputError, match=r"params\.augmentation\.copies"):
        train_model(index, augmentation={**_augmentation(), "copies": 0},
                    augmented_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="augmented_dir"):
        train_model(index, augmentation=_augmentation())


def test_project_training_records_the_marked_preset_and_stores_its_copies(
    ctx: Kensa, make_project: Any
) -> None:
    make_project("parts", n_train=4, n_test_good=1, n_defect=1)
    assert augmentation_words(ctx, "parts").startswith("No augmentation preset")
    preset = save_preset(ctx, "parts", "light", CONFIG)
    plain_id = request_training(ctx, "parts", shots=2, params=PARAMS)  # none marked yet
    assert "augmentation" not in get_model_version(ctx, plain_id)["params"]
    named = request_training(ctx, "parts", shots=2, params=PARAMS, augmentation="light")
    assert get_model_version(ctx, named)["params"]["augmentation"]["preset"] == "light"
    mark_for_training(ctx, "parts", "light")
    assert "“light”" in augmentation_words(ctx, "parts")
    assert f"{AUGMENTED_COPIES} augmented" in augmentation_words(ctx, "parts")
    # the time the page forecasts counts the copies it will fit (4 train goods, the test good
    # and the defect are held out)
    forecast = training_setup(ctx, "parts").duration
    assert f"(with {4 * AUGMENTED_COPIES} augmented copies)" in forecast
    off = request_training(ctx, "parts", shots=2, params=PARAMS, augmentation=None)
    assert "augmentation" not in get_model_version(ctx, off)["params"]
    with ctx.session() as s:  # only the last one is run here
        for mv_id in (plain_id, named, off):
            repo.cancel_model_version(s, mv_id)

    mv_id = request_training(ctx, "parts", shots=2, params=PARAMS)
    recorded = get_model_version(ctx, mv_id)["params"]["augmentation"]
    assert recorded == {"preset": "light", "preset_id": preset["id"],
                        "copies": AUGMENTED_COPIES, "config": CONFIG.to_json()}
    mv = run_training(ctx, mv_id)
    n_copies = 2 * AUGMENTED_COPIES
    assert mv["metrics"]["augmentation"] == {"preset": "light", "copies": AUGMENTED_COPIES,
                                             "augmented_images": n_copies}
    assert mv["metrics"]["fit"]["n_images"] == 2 + n_copies
    folder = ctx.model_dir(mv["project_id"], mv_id) / AUGMENTED_DIR
    files = {str(p.resolve()): sha256_file(p) for p in folder.iterdir()}
    assert len(files) == n_copies
    with ctx.session(readonly=True) as s:
        (bank,) = repo.list_state_versions(s, mv_id)
    assert len(bank.source_images) == 2  # the shots; copies are not project images
    # the records the Explainability page crops "nearest normal patches" from
    n_records = (2 + n_copies) * len(views_for("auto", 2))
    records = provenance(ctx, "parts", bank.id, range(n_records + 5)).values()
    assert len(records) == n_records
    on_copies = {(r.path, r.sha256) for r in records if r.path in files}
    assert on_copies == set(files.items())
    assert len([r for r in records if r.path in files]) == n_copies * len(views_for("auto", 2))

"""services.augmentation.presets: save, load, rename, delete, the one for training, and stored
configs that went bad."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from db.models import AugmentationPreset
from engine.augment import TRANSFORMS, AugmentConfig, AugmentConfigError, default_step
from services.augmentation.presets import (
    PresetError,
    delete_preset,
    get_preset,
    list_presets,
    load_config,
    mark_for_training,
    rename_preset,
    save_preset,
    training_preset,
)
from services.context import Kensa
from services.data.projects import ProjectNotFound


def _config(*names: str, seed: int = 0) -> AugmentConfig:
    return AugmentConfig(seed=seed, transforms=tuple(default_step(n) for n in names))


FLIP = _config("HorizontalFlip")
NOISY = _config("HorizontalFlip", "GaussNoise", seed=3)


def _corrupt(ctx: Kensa, name: str, config: Any) -> None:
    """Overwrite a stored config behind the service's back (a hand edit in the database)."""
    with ctx.session() as s:
        s.execute(update(AugmentationPreset).where(AugmentationPreset.name == name)
                  .values(config=config))


def test_save_list_get_and_load_back(ctx: Kensa, project: str) -> None:
    saved = save_preset(ctx, project, "  gentle   turns ", NOISY)
    assert saved["name"] == "gentle turns"  # cleaned like project names
    save_preset(ctx, project, "a flip", FLIP.to_json())  # a plain dict is fine too
    presets = list_presets(ctx, project)
    assert [p["name"] for p in presets] == ["a flip", "gentle turns"]
    got = get_preset(ctx, project, "gentle turns")
    assert got["config"] == NOISY.to_json() and got["for_training"] is False
    assert got["summary"] == " · ".join(
        TRANSFORMS[n].title for n in ("HorizontalFlip", "GaussNoise"))
    assert load_config(got) == NOISY


def test_saving_a_name_again_overwrites(ctx: Kensa, project: str) -> None:
    first = save_preset(ctx, project, "p", FLIP)
    again = save_preset(ctx, project, "p", NOISY)
    assert again["id"] == first["id"] and again["updated_at"] >= first["updated_at"]
    assert [load_config(p) for p in list_presets(ctx, project)] == [NOISY]


def test_invalid_config_is_refused_naming_the_field(ctx: Kensa, project: str) -> None:
    bad = {**FLIP.to_json(), "transforms": [{"name": "HorizontalFlip", "p": 2.0, "params": {}}]}
    with pytest.raises(AugmentConfigError, match=r"transforms\[0\]\.p"):
        save_preset(ctx, project, "bad", bad)
    assert list_presets(ctx, project) == []


def test_bad_names_and_unknown_presets_are_plain_errors(ctx: Kensa, project: str) -> None:
    with pytest.raises(PresetError, match="needs a name"):
        save_preset(ctx, project, "   ", FLIP)
    with pytest.raises(PresetError, match="'ghost'"):
        get_preset(ctx, project, "ghost")
    with pytest.raises(PresetError, match="'ghost'"):
        delete_preset(ctx, project, "ghost")
    with pytest.raises(PresetError, match="'ghost'"):
        rename_preset(ctx, project, "ghost", "spirit")
    with pytest.raises(PresetError, match="'ghost'"):
        mark_for_training(ctx, project, "ghost")
    with pytest.raises(ProjectNotFound):
        list_presets(ctx, "no such project")


def test_rename_refuses_a_taken_name_and_delete_removes(ctx: Kensa, project: str) -> None:
    save_preset(ctx, project, "a", FLIP)
    save_preset(ctx, project, "b", NOISY)
    with pytest.raises(PresetError, match="'b' already exists"):
        rename_preset(ctx, project, "a", "b")
    renamed = rename_preset(ctx, project, "a", "c")
    assert renamed["name"] == "c" and load_config(renamed) == FLIP
    delete_preset(ctx, project, "b")
    assert [p["name"] for p in list_presets(ctx, project)] == ["c"]


def test_only_one_preset_is_for_training(ctx: Kensa, project: str) -> None:
    assert training_preset(ctx, project) is None
    save_preset(ctx, project, "a", FLIP)
    save_preset(ctx, project, "b", NOISY)
    mark_for_training(ctx, project, "a")
    mark_for_training(ctx, project, "b")
    assert [p["for_training"] for p in list_presets(ctx, project)] == [False, True]
    assert load_config(training_preset(ctx, project)) == NOISY  # type: ignore[arg-type]
    mark_for_training(ctx, project, None)
    assert training_preset(ctx, project) is None
    mark_for_training(ctx, project, "a")
    delete_preset(ctx, project, "a")  # deleting it leaves training without augmentation
    assert training_preset(ctx, project) is None


@pytest.mark.parametrize("stored, field", [
    ({"kensa": {"version": 1, "seed": 0,
                "transforms": [{"name": "NoSuchTransform", "p": 0.5, "params": {}}]}},
     r"transforms\[0\]"),
    ({"kensa": {"version": 1, "seed": 0,
                "transforms": [{"name": "HorizontalFlip", "p": "often", "params": {}}]}},
     r"transforms\[0\]\.p"),
    ({"b": 0.2}, "no settings"),  # a row written before presets held engine configs
])
def test_a_corrupted_stored_config_names_the_preset(
    ctx: Kensa, project: str, stored: dict[str, Any], field: str
) -> None:
    save_preset(ctx, project, "broken", FLIP)
    mark_for_training(ctx, project, "broken")
    _corrupt(ctx, "broken", stored)
    listed = list_presets(ctx, project)  # listing still works, the page can offer a fix
    assert [p["name"] for p in listed] == ["broken"]
    for preset in (get_preset(ctx, project, "broken"), training_preset(ctx, project)):
        with pytest.raises(PresetError, match=f"'broken'.*{field}"):
            load_config(preset)  # type: ignore[arg-type]
    mark_for_training(ctx, project, None)
    with pytest.raises(PresetError, match=f"'broken'.*{field}"):
        mark_for_training(ctx, project, "broken")  # refused now, not at training time
    assert training_preset(ctx, project) is None

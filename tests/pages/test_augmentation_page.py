"""Augmentation page through AppTest: the before/after grid follows the widgets, presets are
saved, loaded, renamed, deleted and marked for training, and bad data is said in words."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from db.models import AugmentationPreset
from services.augmentation.presets import mark_for_training, save_preset, training_preset
from services.context import Kensa
from services.data.projects import create_project
from tests.pages.conftest import open_app, texts
from ui.common import AUGMENTATION_PAGE

N_TILES = 12


def _images(at: AppTest) -> list[tuple[str, str]]:
    """(caption, url) of every picture on the page; the url names the picture's bytes."""
    return [(img.caption, img.url) for el in at.get("image") for img in el.proto.imgs]


def _after(at: AppTest) -> list[str]:
    return [url for caption, url in _images(at) if caption == "After"]


def _before(at: AppTest) -> list[str]:
    return [url for caption, url in _images(at) if caption.startswith("Before")]


def _shown(at: AppTest) -> str:
    """The page's texts without Markdown escapes (captions go through ui.common.plain)."""
    return texts(at).replace("\\", "")


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def _open(project: str = "widgets") -> AppTest:
    at = open_app(AUGMENTATION_PAGE, project)
    assert not at.exception, at.exception
    return at


def test_grid_follows_the_sliders(home: Path, make_project) -> None:
    make_project("widgets", n_train=9, n_test_good=1, n_defect=3, size=64)
    at = _open()
    assert "Augmentation · widgets" in _shown(at)
    originals = _before(at)
    assert len(originals) == N_TILES and len(_after(at)) == N_TILES
    assert _after(at) == originals  # nothing switched on: the pictures are unchanged
    assert "No change is switched on yet" in _shown(at)

    at.checkbox(key="aug_on_RandomBrightnessContrast").check().run()
    at.slider(key="aug_p_RandomBrightnessContrast").set_value(1.0).run()
    assert not at.exception
    first = _after(at)
    assert len(first) == N_TILES and first != _before(at)
    drawn = _shown(at).count("Brightness and contrast: contrast ×")  # what was drawn, per tile
    assert drawn == N_TILES

    at.slider(key="aug_RandomBrightnessContrast_brightness_limit").set_value((0.3, 0.5)).run()
    assert not at.exception
    second = _after(at)
    assert second != first and _before(at) == originals  # only the after-images change

    _button(at, "Reshuffle").click().run()  # a new seed: other draws, same settings
    assert at.number_input(key="aug_seed").value != 0
    assert _after(at) != second


def test_a_synthetic_defect_is_drawn_with_its_outline(home: Path, make_project) -> None:
    make_project("widgets", n_train=4, n_test_good=0, n_defect=0, size=64)
    at = _open()
    plain_after = _after(at)
    at.checkbox(key="aug_on_PerlinDefect").check().run()
    at.slider(key="aug_p_PerlinDefect").set_value(1.0).run()
    outlined = _after(at)
    assert not at.exception and len(outlined) == 4 and outlined != plain_after
    assert _shown(at).count("Stain (Perlin): ") == 4
    at.toggle(key="aug_masks").set_value(False).run()  # the same defects, without outlines
    assert not at.exception and _after(at) != outlined


def test_presets_save_load_rename_mark_and_delete(home: Path, make_project, ctx: Kensa) -> None:
    make_project("widgets", n_train=3, n_test_good=0, n_defect=1, size=64)
    at = _open()
    assert "Training uses no augmentation." in _shown(at)
    at.checkbox(key="aug_on_GaussNoise").check().run()
    at.slider(key="aug_GaussNoise_std_range").set_value((0.05, 0.1)).run()
    at.text_input(key="aug_new_name").input("noisy")
    _button(at, "Save").click().run()
    assert not at.exception
    assert "Saved as “noisy”." in _shown(at)
    assert at.selectbox(key="aug_preset").options == ["noisy"]
    assert at.selectbox(key="aug_preset").value == "noisy"

    # move the slider away, then load the preset back: the widgets follow it
    at.slider(key="aug_GaussNoise_std_range").set_value((0.2, 0.3)).run()
    _button(at, "Load").click().run()
    assert not at.exception and "Loaded “noisy”" in _shown(at)
    assert at.slider(key="aug_GaussNoise_std_range").value == (0.05, 0.1)

    # switched off and loaded by choosing it in the list
    at.checkbox(key="aug_on_GaussNoise").uncheck().run()
    at.selectbox(key="aug_preset").set_value(None).run()
    at.selectbox(key="aug_preset").select("noisy").run()
    assert at.checkbox(key="aug_on_GaussNoise").value is True

    _button(at, "Use for training").click().run()
    assert "Training uses **noisy**." in _shown(at)
    assert training_preset(ctx, "widgets")["name"] == "noisy"

    at.text_input(key="aug_rename").input("grainy")
    at.button(key="aug_rename_go").click().run()
    assert not at.exception and "Renamed “noisy” to “grainy”." in _shown(at)
    assert at.selectbox(key="aug_preset").options == ["grainy (used for training)"]
    assert at.selectbox(key="aug_preset").value == "grainy"
    assert training_preset(ctx, "widgets")["name"] == "grainy"  # still the one training uses

    _button(at, "Delete for good").click().run()  # inside the Delete popover: a confirmation
    assert not at.exception and "Deleted “grainy”." in _shown(at)
    assert "aug_preset" not in [s.key for s in at.selectbox]  # no preset left to choose
    assert "Training uses no augmentation." in _shown(at)
    assert training_preset(ctx, "widgets") is None


def test_a_bad_name_is_refused_in_words(home: Path, make_project) -> None:
    make_project("widgets", n_train=2, n_test_good=0, n_defect=0, size=64)
    at = _open()
    _button(at, "Save").click().run()
    assert "Type a name for these settings first." in _shown(at)
    at.text_input(key="aug_new_name").input("a/b\x00").run()
    _button(at, "Save").click().run()
    assert not at.exception and "Not saved:" in _shown(at)


def test_a_broken_stored_preset_names_the_field_and_the_page_keeps_working(
    home: Path, make_project, ctx: Kensa
) -> None:
    make_project("widgets", n_train=3, n_test_good=0, n_defect=0, size=64)
    save_preset(ctx, "widgets", "old", {"version": 1, "seed": 0, "transforms": [
        {"name": "GaussNoise", "p": 1.0, "params": {"std_range": [0.01, 0.02]}}]})
    mark_for_training(ctx, "widgets", "old")
    broken = {"kensa": {"version": 1, "seed": 0, "transforms": [
        {"name": "GaussNoise", "p": 1.0, "params": {"std_range": "very noisy"}}]}}
    with ctx.session() as s:  # as if edited by hand in the database
        s.execute(update(AugmentationPreset).values(config=broken))
    at = _open()
    assert "transforms[0].params.std_range" in _shown(at)
    assert len(_after(at)) == 3  # the preview still works
    at.selectbox(key="aug_preset").select("old").run()
    assert not at.exception
    errors = [e.value.replace("\\", "") for e in at.error]
    assert any("cannot be loaded" in e and "transforms[0].params.std_range" in e for e in errors)
    at.checkbox(key="aug_on_HorizontalFlip").check().run()  # still usable after the error
    assert not at.exception and len(_after(at)) == 3


def test_a_project_without_images_says_so(home: Path, ctx: Kensa, tmp_path: Path) -> None:
    data = tmp_path / "broken" / "train" / "good"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(b"not an image")
    create_project(ctx, "empty", tmp_path / "broken")
    at = _open("empty")
    assert "no images yet" in _shown(at)
    assert [p.proto.label for p in at.get("page_link")] == ["Add images on the Datasets page"]
    assert not _images(at)

"""Explainability page through AppTest on a really trained project (tests/trained.py): the
image picker and its ``?image=`` link, verdict and numbers, regions with their nearest good
patches, an upload, "this is normal" (refused for a labelled defect, a new bank version for a
false alarm), and the page without a model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from services.context import Kensa
from services.data.projects import get_project
from services.history.versions import history
from services.inference.batches import get_active_model
from services.inference.explain import explainable_images
from tests.pages.conftest import open_app, texts
from tests.trained import stored_scores

PAGE = "app_pages/explainability.py"


def _images(ctx: Kensa) -> dict[str, str]:
    """Dataset label (``test/spot/000.png``) -> sha256, as the picker offers them."""
    return {i["label"]: i["key"] for i in explainable_images(ctx, "widgets")
            if i["source"] == "dataset"}


def _defect_above_threshold(ctx: Kensa) -> str:
    """The label of the labelled-defect test image the model in use scores highest; the
    test needs it above the threshold (stored scores, not the page's own computation)."""
    active = get_active_model(ctx, "widgets")
    scores = stored_scores(ctx, "widgets", active.model_version_id)
    name, (_, score) = max(((n, v) for n, v in scores.items() if v[0] == "defect"),
                           key=lambda item: item[1][1])
    assert score >= active.rule.value, "the tiny model misses every defect: fixture broke"
    return next(label for label in _images(ctx) if label.startswith("test/")
                and label.endswith("/" + name) and "/good/" not in label)


def _shown(at: AppTest) -> str:
    """What the user reads, without the Markdown escapes of ``plain()``."""
    return texts(at).replace("\\", "")


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def _regions(at: AppTest):
    return next((d.value for d in at.dataframe if "kind" in d.value.columns), None)


def test_without_a_model_the_page_points_at_training(home: Path, make_project) -> None:
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    at = open_app(PAGE, "widgets")
    assert not at.exception, at.exception
    assert "has no trained model yet" in _shown(at)
    assert [p for p in at.get("page_link") if "Training" in p.proto.label]
    assert not at.main.selectbox and not at.get("download_button")


def test_opening_picks_an_image_and_shows_the_verdict(trained: Kensa) -> None:
    at = open_app(PAGE, "widgets")
    assert not at.exception, at.exception
    picker = at.selectbox(key="xp_image")
    first = explainable_images(trained, "widgets")[0]
    assert picker.value == first["key"] and at.query_params["image"] == first["key"]
    shown = _shown(at)
    threshold = get_active_model(trained, "widgets").rule.value
    assert f"threshold {threshold:.3g}" in shown
    assert ":red-background" in shown or ":green-background" in shown  # verdict, in colour
    assert "held-out good images" in shown  # the confidence in words
    assert first["key"] not in shown and str(trained.home) not in shown  # no sha256, no paths
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download this picture (PNG)", "Report (HTML)", "Data (JSON)"]

    # a slider move redraws the overlay only: same explanation, no error
    at.slider(key="xp_alpha").set_value(0.8).run()
    at.selectbox(key="xp_cmap").set_value("viridis").run()
    assert not at.exception, at.exception

    # the backbone's stages, only when asked for
    stages = [i.caption for el in at.get("image") for i in el.proto.imgs
              if i.caption.startswith("Stage")]
    assert stages == []
    at.toggle(key="xp_features").set_value(True).run()
    stages = [i.caption for el in at.get("image") for i in el.proto.imgs
              if i.caption.startswith("Stage")]
    assert len(stages) >= 2, stages


def test_a_defect_image_shows_regions_and_nearest_good_patches(trained: Kensa) -> None:
    label = _defect_above_threshold(trained)
    at = open_app(PAGE, "widgets")
    at.selectbox(key="xp_image").set_value(_images(trained)[label]).run()
    assert not at.exception, at.exception
    assert at.query_params["image"] == _images(trained)[label]  # the link follows the picker
    assert ":red-background[:red[:material/report: Defect]]" in _shown(at)
    table = _regions(at)
    assert table is not None and len(table) >= 1
    assert list(table.columns) == ["#", "kind", "box", "area px", "area %", "peak", "mean"]
    assert table["#"].tolist() == list(range(1, len(table) + 1))
    captions = [i.caption.replace("\\", "") for el in at.get("image") for i in el.proto.imgs]
    nearest = [c for c in captions if "distance" in c]
    assert len(nearest) >= len(table)  # at least one good patch per region
    assert all("train/" not in c and str(trained.home) not in c for c in nearest)
    assert any(c.startswith("Region 1 of this image") for c in captions)


def test_the_link_keeps_the_image_and_an_old_link_says_so(trained: Kensa) -> None:
    images = _images(trained)
    wanted = images[sorted(images)[-1]]  # not the first: a fallback would not pass
    at = AppTest.from_file(open_app.__globals__["APP"], default_timeout=60)
    at.run()
    at.query_params["project"] = "widgets"
    at.query_params["image"] = wanted
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="xp_image").value == wanted
    assert "no longer in this project" not in _shown(at)

    at.query_params["image"] = "0" * 64
    at.run()
    assert "no longer in this project" in _shown(at)
    assert at.query_params["image"] in images.values()


def test_an_upload_is_explained(trained: Kensa) -> None:
    label = _defect_above_threshold(trained)
    path = _project_root(trained) / label
    at = open_app(PAGE, "widgets")
    at.radio(key="xp_from").set_value("upload").run()
    assert "image" not in at.query_params  # a link cannot carry an upload
    at.file_uploader[0].set_value(("part 7.png", path.read_bytes(), "image/png")).run()
    assert not at.exception, at.exception
    shown = _shown(at)
    assert "part 7.png" in shown
    assert _regions(at) is not None  # a defect image, as uploaded

    at.file_uploader[0].set_value(("notes.png", b"not an image", "image/png")).run()
    assert not at.exception
    assert "This image cannot be explained" in _shown(at)


def test_this_is_normal_is_refused_for_a_labelled_defect(trained: Kensa) -> None:
    label = _defect_above_threshold(trained)
    at = open_app(PAGE, "widgets")
    at.selectbox(key="xp_image").set_value(_images(trained)[label]).run()
    _button(at, "This is normal (false alarm)").click().run()
    assert "roll back" in _shown(at)  # the dialog says what will happen first
    _button(at, "Yes, this part is good").click().run()
    assert not at.exception, at.exception
    assert "Nothing was changed" in _shown(at) and "labelled defect" in _shown(at)
    assert get_active_model(trained, "widgets").bank_version == 1  # nothing written


def test_this_is_normal_on_a_false_alarm_makes_a_new_bank_version(trained: Kensa) -> None:
    label = _defect_above_threshold(trained)
    path = _project_root(trained) / label
    pixels = np.array(Image.open(path).convert("RGB"))
    pixels[0, 0] = (pixels[0, 0].astype(int) + 1) % 256  # another file, same look: not labelled
    upload = io.BytesIO()
    Image.fromarray(pixels).save(upload, format="PNG")
    before = get_active_model(trained, "widgets").bank_version

    at = open_app(PAGE, "widgets")
    at.radio(key="xp_from").set_value("upload").run()
    at.file_uploader[0].set_value(("checked ok.png", upload.getvalue(), "image/png")).run()
    assert ":red-background[:red[:material/report: Defect]]" in _shown(at)
    _button(at, "This is normal (false alarm)").click().run()
    at.text_input(key="xp_by_input").input("Mia")
    _button(at, "Yes, this part is good").click().run()  # KENSA_JOBS_INLINE: it runs now
    assert not at.exception, at.exception
    shown = _shown(at)
    assert "now counts this part as good" in shown, shown
    assert "Model 2 · update 1" in shown  # explained again, by the new version
    assert [p for p in at.get("page_link") if "roll back" in p.proto.label]
    active = get_active_model(trained, "widgets")
    assert active.bank_version == before + 1
    newest = history(trained, "widgets")["memory_bank_versions"][-1]
    assert newest["active"] and "Mia" in newest["note"] and "checked ok.png" in newest["note"]


def _project_root(ctx: Kensa) -> Path:
    return Path(get_project(ctx, "widgets")["data_root"])


def test_a_refused_bank_update_is_said_in_words(trained: Kensa) -> None:
    """A blank frame: the update job refuses it (it would teach "flat is good"), and the page
    says why with the name the person uploaded, not the server path or the fingerprint."""
    blank = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(blank, format="PNG")
    at = open_app(PAGE, "widgets")
    at.radio(key="xp_from").set_value("upload").run()
    at.file_uploader[0].set_value(("lens cap.png", blank.getvalue(), "image/png")).run()
    assert ":red-background[:red[:material/report: Defect]]" in _shown(at)  # the premise
    _button(at, "This is normal (false alarm)").click().run()
    _button(at, "Yes, this part is good").click().run()
    assert not at.exception, at.exception
    shown = _shown(at)
    assert "The model was not changed" in shown and "lens cap.png" in shown, shown
    assert str(trained.home) not in shown and "marked_normal" not in shown
    assert get_active_model(trained, "widgets").bank_version == 1

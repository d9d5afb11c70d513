"""Home and Datasets pages through AppTest: what a user sees after each action."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from tests.pages.conftest import open_app, texts
from tests.synthetic import make_mvtec
from ui.common import plain

DATASETS = "app_pages/datasets.py"


def _zip_folder(root: Path, prefix: str = "parts", extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(root).as_posix()}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def _frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def _upload_new_project(at: AppTest, name: str, data: bytes) -> AppTest:
    at.text_input(key="zip-name").input(name)
    at.file_uploader[0].set_value((f"{name}.zip", data, "application/zip"))
    _button(at, "Import zip").click()
    return at.run()


def test_home_without_projects_says_what_to_do(home: Path) -> None:
    at = open_app()
    assert not at.exception
    assert "There is no project yet" in texts(at)
    assert at.sidebar.selectbox[0].value is None


def test_home_shows_a_status_card_per_project(home: Path, make_project) -> None:
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    make_project("bolts", n_train=2, n_test_good=1, n_defect=0)
    at = open_app()
    assert not at.exception
    shown = texts(at)
    assert "widgets" in shown and "bolts" in shown
    metrics = [(m.label, m.value) for m in at.metric]
    assert ("Good images", "7") in metrics and ("Defect images", "3") in metrics
    assert ("Model in use", "none yet") in metrics
    assert "Next step: train a model" in shown


def test_home_card_of_a_trained_project(home: Path, trained) -> None:
    from services.training.project import list_model_versions

    newest = list_model_versions(trained, "widgets")[0]
    goods = list_model_versions(trained, "goods")[0]
    assert goods["id"] > newest["id"]  # ids are global: "goods" trained after "widgets"
    at = open_app()
    assert not at.exception
    shown = texts(at)
    assert "Check at training: 8 held-out images scored" in shown
    assert "validation-m" not in shown  # internal batch names stay internal
    metrics = [(m.label, m.value) for m in at.metric]
    # numbered within each project, whatever the database ids: widgets' second, goods' first
    assert ("Model in use", "Model 2") in metrics and ("Model in use", "Model 1") in metrics
    # the quality is on the card, in words, not only in a tooltip
    auroc = f"{newest['metrics']['image_auroc']:.2f}"
    assert ("Good vs defect (AUROC)", auroc) in metrics
    # no server paths or checksums on the cards
    with trained.session(readonly=True) as s:
        from db.repositories import list_projects
        roots = [p.data_root for p in list_projects(s)]
    assert roots and not any(root in shown for root in roots)


def test_new_project_from_zip_upload(home: Path, tmp_path: Path) -> None:
    data = _zip_folder(make_mvtec(tmp_path / "src", n_train=4, n_test_good=2, n_defect=2))
    at = open_app(DATASETS)
    assert "New project" in texts(at)
    at = _upload_new_project(at, "parts", data)
    assert not at.exception
    shown = texts(at)
    assert "Datasets · parts" in shown
    assert "8 new image(s)" in shown
    assert at.sidebar.selectbox[0].value == "parts"
    counts = _frames(at)[0]
    assert counts.set_index("split").loc["train", "good"] == 4
    assert (home / "imports" / "parts" / "train" / "good").is_dir()


def test_zip_with_traversal_entries_imports_the_rest_and_lists_them(
    home: Path, tmp_path: Path
) -> None:
    data = _zip_folder(
        make_mvtec(tmp_path / "src", n_train=3, n_test_good=1, n_defect=1),
        extra={"../../evil.png": b"\x89PNG\r\n\x1a\nnot really", "parts/notes.txt": b"hi"},
    )
    at = _upload_new_project(open_app(DATASETS), "risky", data)
    assert not at.exception
    shown = texts(at)
    assert "2 file(s) were not imported" in shown
    rejected = next(f for f in _frames(at) if "reason" in f.columns)
    reasons = dict(zip(rejected["file"], rejected["reason"], strict=True))
    assert "leaves the import folder" in reasons["../../evil.png"]
    assert "not an image file" in reasons["parts/notes.txt"]
    assert not any(p.name == "evil.png" for p in tmp_path.rglob("*"))
    assert "Datasets · risky" in shown


def test_not_a_zip_shows_an_error_and_creates_nothing(home: Path) -> None:
    at = _upload_new_project(open_app(DATASETS), "junk", b"this is not a zip")
    assert not at.exception
    assert any("Nothing was imported" in e.value for e in at.error)
    assert at.sidebar.selectbox[0].value is None


def test_folder_with_a_corrupt_image_reports_it(home: Path, tmp_path: Path) -> None:
    src = make_mvtec(tmp_path / "src", n_train=3, n_test_good=1, n_defect=1)
    good = next((src / "train" / "good").glob("*.png"))
    (src / "train" / "good" / "broken.png").write_bytes(good.read_bytes()[:200])
    at = open_app(DATASETS)
    at.text_input(key="folder-name").input("folderproj")
    next(t for t in at.text_input if t.label == "Folder path").input(str(src))
    _button(at, "Import folder").click()
    at.run()
    assert not at.exception
    shown = texts(at)
    assert "Problems found: 1" in shown
    report = next(f for f in _frames(at) if "problem" in f.columns)
    row = report[report["file"].str.endswith("broken.png")].iloc[0]
    assert row["problem"] == "not imported (refused while copying)"
    assert "decode" in row["details"] or "image" in row["details"]
    assert ("Images", "5") in [(m.label, m.value) for m in at.metric]


def test_missing_folder_is_a_plain_error(home: Path, tmp_path: Path) -> None:
    at = open_app(DATASETS)
    at.text_input(key="folder-name").input("nothing")
    next(t for t in at.text_input if t.label == "Folder path").input(str(tmp_path / "nope"))
    _button(at, "Import folder").click()
    at.run()
    assert not at.exception
    assert any("no such folder" in e.value for e in at.error)


def test_empty_project_explains_next_step(home: Path, ctx, tmp_path: Path) -> None:
    from services.data.projects import create_project

    root = tmp_path / "empty"
    (root / "train" / "good").mkdir(parents=True)
    create_project(ctx, "empty", root)
    at = open_app(DATASETS, "empty")
    assert not at.exception
    shown = texts(at)
    assert "no usable images yet" in shown
    assert "Images: 0" in shown
    for page in ("app_pages/training.py", "app_pages/evaluation.py", "app_pages/home.py"):
        at.switch_page(page)
        at.run()
        assert not at.exception, page
    at.switch_page("app_pages/training.py")
    at.run()
    assert "no good training images yet" in texts(at)


def test_gallery_filters_masks_and_details(home: Path, make_project) -> None:
    make_project("widgets", n_train=4, n_test_good=2, n_defect=3)
    at = open_app(DATASETS, "widgets")
    # opens on the good images (4 train + 2 test), each named by split, type and file
    assert at.selectbox(key="ds_label_widgets").value == "good"
    assert "Images 1–6 of 6" in texts(at) and len(at.image) == 6
    names = [b.label for b in at.button if b.key and b.key.startswith("ds_open_")]
    # good_000.png twice (train and test), told apart (labels are Markdown-escaped names)
    assert plain("train · good · good_000.png") in names
    assert plain("test · good · good_000.png") in names
    assert len(set(names)) == len(names)  # 000.png twice, but never the same label

    at.selectbox(key="ds_label_widgets").select("defect").run()
    assert "Images 1–3 of 3" in texts(at)
    at.selectbox(key="ds_type_widgets").select("spot").run()
    at.selectbox(key="ds_label_widgets").select("All").run()  # type resets with the label
    assert at.selectbox(key="ds_type_widgets").value == "All"
    assert "No image matches" not in texts(at) and "Images 1–9 of 9" in texts(at)

    at.selectbox(key="ds_label_widgets").select("defect").run()
    at.toggle(key="ds_masks").set_value(True).run()
    assert not at.exception
    assert not [f for f in _frames(at) if "value" in f.columns]  # details open on a click
    defect = next(b for b in at.button if b.label.startswith("test · spot · "))
    defect.click().run()
    assert not at.exception
    assert len(at.image) == 3 + 1  # the grid and the detail preview
    detail = next(f for f in _frames(at) if "value" in f.columns)
    assert list(detail.columns) == ["detail", "value"]  # a header over every column
    values = dict(zip(detail["detail"], detail["value"], strict=True))
    assert values["Label"] == "defect" and values["Defect type"] == "spot"
    assert values["Mask"].endswith("_mask.png")
    assert len(values["SHA-256"]) == 64
    assert defect.label.endswith(plain(Path(values["File"]).name))


def test_new_project_button_opens_the_form_and_the_menu_leaves_it(
    home: Path, make_project
) -> None:
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    at = open_app(DATASETS, "widgets")
    assert "Datasets · widgets" in texts(at)
    at.sidebar.button[0].click().run()
    assert not at.exception
    assert "New project" in texts(at)
    assert [link.label for link in at.get("page_link")] == [
        "Cancel: back to the current project"]
    at.switch_page(DATASETS)
    at.run()
    assert "Datasets · widgets" in texts(at)


def test_adding_a_second_zip_adds_only_new_images(home: Path, tmp_path: Path) -> None:
    first = _zip_folder(make_mvtec(tmp_path / "a", n_train=3, n_test_good=1, n_defect=1))
    at = _upload_new_project(open_app(DATASETS), "line3", first)
    assert ("Images", "5") in [(m.label, m.value) for m in at.metric]
    more = _zip_folder(make_mvtec(tmp_path / "b", n_train=5, n_test_good=1, n_defect=1, seed=7),
                       prefix="other-name")
    at.file_uploader[0].set_value(("more.zip", more, "application/zip"))
    _button(at, "Import zip").click().run()
    assert not at.exception
    shown = texts(at)
    # same file names with other pixels are refused, new names are added
    assert "2 new image(s)" in shown
    rejected = next(f for f in _frames(at) if "reason" in f.columns)
    assert rejected["reason"].str.contains("different file with this name").sum() == 6  # +mask
    assert ("Images", "7") in [(m.label, m.value) for m in at.metric]

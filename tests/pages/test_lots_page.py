"""Production lots page through AppTest: no model, scoring a folder as a job (run inline, as
the page tests' conftest sets), resuming it, the results table, filters and a review."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from services.context import Kensa
from services.data.projects import get_project
from services.inference.lots import lot_results
from tests.pages.conftest import open_app, texts

LOTS = "app_pages/lots.py"


def _button(at: AppTest, label: str, index: int = 0):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[index]


def _results(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "verdict" in d.value.columns)


def _score_folder(at: AppTest, lot: str, folder: Path) -> None:
    at.text_input(key="lot-folder-name").input(lot)
    next(t for t in at.text_input if t.label == "Folder with the images").input(str(folder))
    _button(at, "Score").click()
    at.run()


def test_without_a_model_the_page_points_at_training(home: Path, make_project) -> None:
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    at = open_app(LOTS, "widgets")
    assert not at.exception
    assert "has no trained model yet" in texts(at)
    assert not [b for b in at.button if b.label == "Score"]  # nothing to score with


def test_score_a_folder_resume_filter_and_review(trained: Kensa, tmp_path: Path) -> None:
    data = Path(get_project(trained, "widgets")["data_root"])
    folder = Path(shutil.copytree(data / "test", tmp_path / "incoming"))  # under the roots
    n_images = len(list(folder.rglob("*.png")))
    at = open_app(LOTS, "widgets")
    assert not at.exception
    assert "No lot scored yet" in texts(at)
    assert "from Model 2 (threshold" in texts(at)  # the model in use, in the project's own numbers

    _score_folder(at, "Lot A", folder)
    assert not at.exception, at.exception
    shown = texts(at)
    assert f"Lot “Lot A”: {n_images} new images scored, 0 already scored." in shown
    table = _results(at)
    assert len(table) == n_images
    assert all(str(u).startswith("data:image/jpeg;base64,") for u in table["image"])
    assert set(table["folder"]) == {"good", "spot"} and str(folder) not in shown
    assert set(table["verdict"]) <= {"Good", "Defect", "Unsure"}
    defects = int((table["verdict"] == "Defect").sum())
    lots = next(d.value for d in at.dataframe if "overruled" in d.value.columns)
    assert lots.iloc[0][["lot", "images", "defects"]].tolist() == ["Lot A", n_images, defects]

    # the same lot again: nothing is scored twice
    _score_folder(at, "Lot A", folder)
    assert f"Lot “Lot A”: 0 new images scored, {n_images} already scored." in texts(at)

    # filters: defects only, then score above the threshold
    verdicts = at.multiselect(key="lot-verdicts-Lot A")
    assert verdicts.options == ["Good", "Defect"]  # what the lot holds ("Unsure": none)
    verdicts.set_value(["defect"]).run()
    assert len(_results(at)) == defects
    at.multiselect(key="lot-verdicts-Lot A").set_value(["good", "defect"]).run()

    # review: without a name the buttons stay off; with one, Overrule stores who and when
    at.session_state["lot-table-Lot A"] = {"selection": {"rows": [0], "columns": []}}
    at.run()
    assert _button(at, "Overrule").disabled
    at.text_input(key="lot-reviewer").input("Mia").run()
    _button(at, "Overrule").click().run()
    assert not at.exception
    first = lot_results(trained, "widgets", "Lot A")[0]
    assert first["reviewed_by"] == "Mia" and first["reviewed_at"] is not None
    assert first["reviewed_verdict"] != first["verdict"] and first["overruled"]
    at.radio(key="lot-review-filter").set_value("overruled").run()
    table = _results(at)
    assert table[["file", "by"]].values.tolist() == [[first["file"], "Mia"]]
    assert table.iloc[0]["when"].endswith("UTC")
    assert [b for b in at.get("download_button") if "CSV" in b.proto.label]

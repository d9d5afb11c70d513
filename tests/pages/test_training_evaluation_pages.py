"""Training and Evaluation pages through AppTest. Finished trainings come from a tiny real
training made once per session (tests/trained.py); expected values are read from what it
stored, so the tests follow the real scores instead of hand-written rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import services.training.setup as train_setup
from engine.models.fewshot import FewShotConfig
from services.context import Kensa
from services.evaluation.report import at_threshold, load_evaluation, review_band
from services.training.project import list_model_versions
from tests.pages.conftest import open_app, texts
from tests.trained import stored_scores

TRAINING = "app_pages/training.py"
EVALUATION = "app_pages/evaluation.py"


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def _frame_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the runs the page hands to a worker instead of starting a process."""
    started: list[int] = []
    monkeypatch.setattr(train_setup, "start_training_job",
                        lambda ctx, mv_id: started.append(mv_id))
    return started


def test_training_page_recommends_and_explains(home: Path, make_project) -> None:
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    at = open_app(TRAINING, "widgets")
    assert not at.exception
    shown = texts(at)
    assert "Recommended model: Kensa few-shot PatchCore" in shown
    assert "This project has 5 good training images" in shown
    assert "The 3 defect images and 2 held-out good images" in shown
    backbone = at.selectbox(key="tr_backbone")
    assert backbone.value == "efficientnet_lite0"
    assert "resnet18 — needs network" in backbone.options  # the labels the user reads
    size = at.slider(key="tr_size")
    assert (size.min, size.max, size.value) == (128, 768, FewShotConfig().image_size)
    assert "No training yet" in shown


def test_train_button_queues_a_run_shows_progress_and_cancels(
    home: Path, ctx: Kensa, make_project, no_worker: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    at = open_app(TRAINING, "widgets")
    at.radio(key="tr_use_all").set_value("some").run()
    at.number_input(key="tr_shots").set_value(3)
    at.slider(key="tr_size").set_value(256)
    at.radio(key="tr_colour").set_value("gray")
    at.checkbox(key="tr_any_angle").check()
    _button(at, "Train").click().run()
    assert not at.exception
    assert len(no_worker) == 1
    run = list_model_versions(ctx, "widgets")[0]
    assert run["status"] == "queued"
    assert run["params"] == {"shots": 3, "seed": 0,
                             "model": {"backbone": "efficientnet_lite0", "image_size": 256,
                                       "colour": "gray", "views": "any_angle"}}
    shown = texts(at)
    assert "Training Model 1" in shown and "queued" in shown
    assert _button(at, "Train").disabled
    assert at.get("progress")[0].proto.text.endswith("0%")

    at.run()  # a reload: the panel comes back from the database, not from session state
    assert "Training Model 1" in texts(at)
    assert "worker has not started" not in texts(at)
    monkeypatch.setattr(train_setup, "STUCK_QUEUED_S", -1)
    at.run()
    assert "The background worker has not started" in texts(at)
    _button(at, "Cancel").click().run()
    assert not at.exception
    assert list_model_versions(ctx, "widgets")[0]["status"] == "cancelled"
    history = _frame_with(at, "status")
    assert history.iloc[0]["status"] == "cancelled"
    assert history.iloc[0]["good images learned"] == "3"
    assert history.iloc[0]["image AUROC"] == "—"
    assert not _button(at, "Train").disabled


def test_training_refuses_all_shots_without_held_out_data(home: Path, make_project) -> None:
    make_project("tiny", n_train=3, n_test_good=0, n_defect=0)
    at = open_app(TRAINING, "tiny")
    assert not _button(at, "Train").disabled  # "all" keeps 2 aside for the threshold
    at.radio(key="tr_use_all").set_value("some").run()
    at.number_input(key="tr_shots").set_value(2).run()
    assert "Learn from at most 1 good image, so that 2 stay aside" in texts(at)
    assert _button(at, "Train").disabled


def test_failed_start_is_a_plain_error(
    home: Path, ctx: Kensa, make_project, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project("widgets", n_train=3, n_test_good=2, n_defect=1)

    def boom(ctx: Kensa, mv_id: int) -> None:
        raise OSError("cannot start a process")

    monkeypatch.setattr(train_setup, "start_training_job", boom)
    at = open_app(TRAINING, "widgets")
    _button(at, "Train").click().run()
    assert not at.exception
    assert any("Training could not start: cannot start a process" in e.value for e in at.error)
    assert list_model_versions(ctx, "widgets")[0]["status"] == "cancelled"


def test_history_shows_metrics_of_finished_runs(home: Path, trained: Kensa) -> None:
    newest = list_model_versions(trained, "widgets")[0]
    metrics = newest["metrics"]
    at = open_app(TRAINING, "widgets")
    history = _frame_with(at, "image AUROC")
    assert len(history) == 2
    row = history.iloc[0]
    assert row["model"] == "Model 2" and row["status"] == "done"
    assert row["image AUROC"] == f"{metrics['image_auroc']:.3f}"
    assert row["AUPRO"] == f"{metrics['aupro']:.3f}"
    assert row["good images learned"] == str(len(metrics["shots"])) == "3"
    assert row["threshold"] == f"{metrics['threshold']['value']:.4f}"
    assert "Latest model, Model 2, is ready" in texts(at)


def test_evaluation_without_model_says_train_first(home: Path, ctx: Kensa,
                                                   make_project) -> None:
    from db import repositories as repo

    make_project("widgets", n_train=3, n_test_good=2, n_defect=2)
    at = open_app(EVALUATION, "widgets")
    assert not at.exception
    assert "There is no trained model to evaluate yet" in texts(at)
    with ctx.session() as s:  # a training on its way: say so, not "no trained model"
        project = repo.get_project_by_name(s, "widgets")
        mv = repo.create_model_version(s, project.id, "kensa_patchcore", "efficientnet_lite0")
        repo.start_model_version(s, mv.id, stage="extracting features")
    at.run()
    shown = texts(at)
    assert "Training Model 1 is running" in shown
    assert "There is no trained model to evaluate yet" not in shown


def _matrix(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "called defect" in d.value.columns)


def test_evaluation_threshold_slider_and_save(home: Path, trained: Kensa) -> None:
    newest = list_model_versions(trained, "widgets")[0]
    mv = newest["id"]
    scores = stored_scores(trained, "widgets", mv)
    ev = load_evaluation(trained, "widgets", mv)
    at = open_app(EVALUATION, "widgets")
    assert not at.exception
    shown = texts(at)
    assert "Measured on **8 images the model did not learn from**: 4 good and 4 defect" in shown
    metrics = _frame_with(at, "metric").set_index("metric")["value"]
    auroc = f"{newest['metrics']['image_auroc']:.3f}"
    assert metrics["Separates good from defect (image AUROC)"] == auroc
    # counts at the stored threshold, from the stored scores
    goods = [v for label, v in scores.values() if label == "good"]
    defects = [v for label, v in scores.values() if label == "defect"]
    false_alarms = sum(v >= ev.threshold for v in goods)
    missed = sum(v < ev.threshold for v in defects)
    matrix = _matrix(at)
    assert matrix.loc["actually good", "called defect"] == false_alarms
    assert matrix.loc["actually defect", "called good"] == missed
    assert len(at.get("plotly_chart")) == 3  # histogram, ROC, PR
    assert f"Missed defects: {missed / 4:.0%}" in shown
    assert f"False alarms: {false_alarms / 4:.0%}" in shown
    band = review_band(ev)
    zones = _frame_with(at, "zone").set_index("zone")
    assert zones.loc["review", "images"] == band["counts"]["review"]["images"]
    assert sum(zones["images"]) == 8
    assert band["caption"] in shown  # the caption is made from the counts in the table
    # the legend, each worst error, and every evaluated image (right calls too) with its heatmap
    assert len(at.image) == 1 + min(false_alarms, 4) + min(missed, 4) + 8
    # 8 images: the page says the numbers are fragile, and by how much one image moves AUROC
    assert "These numbers rest on only 8 held-out image(s) (4 good, 4 defect)" in shown
    assert "moves the AUROC by up to 0.25" in shown
    # the honest estimate beside the optimistic in-sample counts
    assert "On images that did not choose the threshold" in shown and "optimistic" in shown
    # the trained threshold has a margin: strictly between two stored scores, not on one
    assert ev.threshold not in [v for _, v in scores.values()]

    # below the lowest defect score nothing is missed; the false alarms are every good above
    lo, _, step = ev.slider_scale()
    lowered = max(lo, round(min(defects) - step, 3))
    at.slider(key=f"ev_thr_{mv}").set_value(lowered).run()
    stats = at_threshold(ev, lowered)
    assert stats["fn"] == 0
    assert _matrix(at).loc["actually defect", "called good"] == 0
    assert _matrix(at).loc["actually good", "called defect"] == sum(v >= lowered for v in goods)
    assert "Missed defects: 0%" in texts(at)

    _button(at, "Save threshold").click().run()
    assert not at.exception
    assert f"Saved: the threshold in use is now {lowered:.4f}" in texts(at)
    history = _frame_with(at, "chosen")
    assert history.iloc[0]["threshold"] == pytest.approx(lowered)
    assert bool(history.iloc[0]["active"]) and history.iloc[0]["chosen"] == "set by hand"
    assert not bool(history.iloc[1]["active"])
    assert f"Threshold in use: **{lowered:.4f}** (set by hand)" in texts(at)


def test_evaluation_with_only_good_images_explains_what_is_missing(
    home: Path, trained: Kensa
) -> None:
    at = open_app(EVALUATION, "goods")
    assert not at.exception
    shown = texts(at)
    # no real defects: training painted synthetic ones, and the page says the numbers are theirs
    assert "synthetic)." in shown
    assert "The numbers below measure those made-up defects, not real ones" in shown
    assert "There are no defect images among them" not in shown


def test_older_model_cannot_save(home: Path, trained: Kensa) -> None:
    older = list_model_versions(trained, "widgets")[-1]["id"]
    at = open_app(EVALUATION, "widgets")
    at.selectbox(key="ev_model_widgets").set_value(older).run()
    assert not at.exception
    assert not [b for b in at.button if b.label == "Save threshold"]
    assert "Only the newest model's threshold can be saved" in texts(at)


@pytest.mark.parametrize("page", [TRAINING, EVALUATION])
def test_pages_without_any_project_point_to_creating_one(home: Path, page: str) -> None:
    at = open_app(page)
    assert not at.exception
    assert "No project yet" in texts(at)
    assert [link.label for link in at.get("page_link")] == ["Create a project"]



def test_silent_running_worker_is_reported_as_stopped(
    home: Path, ctx: Kensa, make_project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-run leaves its row "running"; its silence is what gives it away."""
    from db import repositories as repo

    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    with ctx.session() as s:
        project = repo.get_project_by_name(s, "widgets")
        mv = repo.create_model_version(s, project.id, "kensa_patchcore", "efficientnet_lite0")
        repo.start_model_version(s, mv.id, stage="extracting features")
    at = open_app(TRAINING, "widgets")
    assert "running" in texts(at) and "has probably stopped" not in texts(at)
    assert 0 <= train_setup.active_runs(ctx, "widgets")[0]["silent_s"] < 60
    monkeypatch.setattr(train_setup, "STUCK_RUNNING_S", -1)
    at.run()
    assert "has probably stopped" in texts(at)

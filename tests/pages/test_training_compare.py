"""The Training page's model choice and its "Compare models" section through AppTest.

The Model box shows each model's own settings (Kensa's colour and angle questions only for
Kensa; epochs, batch size and early stopping for trained models) and Train records them. The
comparison job runs for real through the jobs layer (inline here); only the per-candidate
child processes are replaced by fixed rows, so the page test is about drawing the stored
result: the pick's reason first, the table with the pick on top, and "Use" setting the box.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from streamlit.testing.v1 import AppTest

import services.training.compare as compare
import services.training.setup as train_setup
from engine.models import registry
from engine.models.registry import ModelSpec
from services.context import Kensa
from services.training.compare import comparison_job, comparison_result
from services.training.project import list_model_versions
from tests.pages.conftest import open_app, texts
from ui.common import plain

TRAINING = "app_pages/training.py"
TRAINED = "test_trained_model"
CLOUD = "test_cloud_model"


class FakeTrained:
    """Stands in for a model trained for epochs: the page only reads its spec."""

    capabilities: ClassVar[frozenset] = frozenset()

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        """Accepts everything: the page's ranges are what is tested."""


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    target = f"{__name__}:FakeTrained"
    monkeypatch.setitem(registry._SPECS, TRAINED, ModelSpec(
        TRAINED, "Trained test model", "Learns for a number of epochs; for the page tests.",
        False, frozenset(), {"image_size": 256, "epochs": 10, "batch_size": 8, "patience": 0},
        target))
    monkeypatch.setitem(registry._SPECS, CLOUD, ModelSpec(
        CLOUD, "Cloud test model", "Downloads its weights; for the page tests.", True,
        frozenset(), {"batch_size": 8}, target))


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    started: list[int] = []
    monkeypatch.setattr(train_setup, "start_training_job",
                        lambda ctx, mv_id: started.append(mv_id))
    return started


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def _keys(at: AppTest) -> set[str]:
    widgets = [*at.slider, *at.radio, *at.checkbox, *at.number_input, *at.selectbox]
    return {w.key for w in widgets if w.key}


def test_model_box_shows_each_models_own_settings_and_train_records_them(
        home: Path, ctx: Kensa, make_project, fake_models: None, no_worker: list[int]) -> None:
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    at = open_app(TRAINING, "widgets")
    assert not at.exception
    box = at.selectbox(key="tr_model")
    assert box.value == "kensa_patchcore"
    assert box.options[0] == "Kensa few-shot PatchCore (recommended)"
    assert "Cloud test model — needs network" in box.options
    assert {"tr_size", "tr_backbone", "tr_colour", "tr_any_angle"} <= _keys(at)
    assert not any(k.startswith("tr_epochs") for k in _keys(at))

    box.set_value("anomalib_patchcore").run()
    keys = _keys(at)
    assert "tr_backbone_anomalib_patchcore" in keys
    assert not {"tr_size", "tr_colour", "tr_any_angle"} & keys  # Kensa's own questions
    assert plain(registry.spec("anomalib_patchcore").description) in texts(at) or \
        registry.spec("anomalib_patchcore").description in texts(at)

    at.selectbox(key="tr_model").set_value(TRAINED).run()
    assert not at.exception
    epochs = at.number_input(key=f"tr_epochs_{TRAINED}")
    assert (epochs.value, epochs.min, epochs.max) == (10, 1, 500)
    assert at.number_input(key=f"tr_batch_{TRAINED}").value == 8
    assert at.number_input(key=f"tr_patience_{TRAINED}").value == 0
    assert at.slider(key=f"tr_size_{TRAINED}").value == 256  # its default, not Kensa's
    assert "tr_colour" not in _keys(at)
    assert "needs network" not in " ".join(w.value for w in at.warning)
    epochs.set_value(3)
    at.number_input(key=f"tr_patience_{TRAINED}").set_value(2)
    _button(at, "Train").click().run()
    assert not at.exception and len(no_worker) == 1
    run = list_model_versions(ctx, "widgets")[0]
    assert run["algorithm"] == TRAINED
    assert run["params"]["model"] == {"image_size": 256, "epochs": 3, "batch_size": 8,
                                      "patience": 2}

    at.selectbox(key="tr_model").set_value(CLOUD).run()
    assert any("downloads weights from the internet" in w.value for w in at.warning)


ROWS = {
    "kensa_patchcore": {"image_auroc": 0.94, "pixel_auroc": 0.97, "f1": 0.9, "fit_s": 4.0,
                        "ms_per_image": 48.0, "peak_rss_mb": 1200.0, "error": None},
    "anomalib_patchcore": {"image_auroc": 0.935, "pixel_auroc": None, "f1": 0.88,
                           "fit_s": 2.0, "ms_per_image": 12.0, "peak_rss_mb": 1100.0,
                           "error": None},
}


def _fake_candidate(plan: Mapping[str, Any], model: str, params: Any = None, *,
                    progress: Any = None, cancelled: Any = None, timeout_s: Any = None
                    ) -> dict[str, Any]:
    """A measured row without a child process (the service tests run the real ones)."""
    if progress is not None:
        progress("epoch 1 of 1", 0.5)
    return {"model": model, **ROWS[model]}


def test_finished_comparison_shows_the_pick_first_and_use_sets_the_model(
        home: Path, ctx: Kensa, make_project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare, "run_candidate", _fake_candidate)
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    at = open_app(TRAINING, "widgets")
    assert "Compare models" in texts(at) and "No comparison yet." in texts(at)
    assert set(at.multiselect(key="tr_compare_models").value) == set(
        compare.default_candidates())
    at.multiselect(key="tr_compare_models").set_value(list(ROWS))
    at.radio(key="tr_use_all").set_value("some").run()
    at.number_input(key="tr_shots").set_value(3).run()
    _button(at, "Compare models").click().run()  # KENSA_JOBS_INLINE: the job runs now
    assert not at.exception
    job = comparison_job(ctx, "widgets")
    assert job["status"] == "done", job["error"]
    assert (job["payload"]["shots"], job["payload"]["seed"]) == (3, 0)
    result = comparison_result(ctx, "widgets")
    assert result["pick"] == "anomalib_patchcore"
    assert result["reason"].startswith("Stock anomalib PatchCore: image AUROC 0.94, as good "
                                       "as Kensa few-shot PatchCore (0.94) within 0.01 and 4× "
                                       "faster")
    assert plain(result["reason"]) in [s.value for s in at.success]
    table = next(d.value for d in at.dataframe if "ms per image" in d.value.columns)
    assert list(table["model"]) == ["Stock anomalib PatchCore", "Kensa few-shot PatchCore"]
    assert list(table["pick"]) == ["★ pick", ""]
    assert list(table["pixel AUROC"]) == ["—", "0.970"]
    assert "Learned from 3 good images; checked on 4 held-out good and 3 defect" in texts(at)
    assert list_model_versions(ctx, "widgets") == []  # no model was made

    # measurement overrides the table: the pick is recommended now
    assert "Recommended model: Stock anomalib PatchCore" in texts(at)
    box = at.selectbox(key="tr_model")
    assert box.options[0] == "Stock anomalib PatchCore (recommended)"
    if box.value != "anomalib_patchcore":
        _button(at, "Use Stock anomalib PatchCore").click().run()
    # the person chose otherwise; "Use" brings the pick back
    at.selectbox(key="tr_model").set_value("kensa_patchcore").run()
    assert "tr_colour" in _keys(at)
    _button(at, "Use Stock anomalib PatchCore").click().run()
    assert not at.exception
    assert at.selectbox(key="tr_model").value == "anomalib_patchcore"
    assert not [b for b in at.button if b.label.startswith("Use ")]


def test_comparison_is_queued_with_progress_and_can_be_cancelled(
        home: Path, ctx: Kensa, make_project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KENSA_JOBS_INLINE", "0")  # queued for a worker that never comes
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    at = open_app(TRAINING, "widgets")
    _button(at, "Compare models").click().run()
    assert not at.exception
    job = comparison_job(ctx, "widgets")
    assert (job["kind"], job["status"]) == ("compare_models", "queued")
    assert set(job["payload"]["candidates"]) == set(compare.default_candidates())
    assert _button(at, "Compare models").disabled
    assert any(p.proto.text.startswith("Comparison: waiting for a worker")
               for p in at.get("progress"))
    _button(at, "Cancel the comparison").click().run()
    assert comparison_job(ctx, "widgets")["status"] == "cancelled"
    at.run()
    assert "The last comparison was cancelled" in texts(at)
    assert not _button(at, "Compare models").disabled


def test_a_refused_comparison_is_one_plain_sentence(
        home: Path, make_project, fake_models: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare, "_offline", lambda: True)
    make_project("widgets", n_train=5, n_test_good=2, n_defect=3)
    at = open_app(TRAINING, "widgets")
    at.multiselect(key="tr_compare_models").set_value(["kensa_patchcore", CLOUD])
    _button(at, "Compare models").click().run()
    assert not at.exception
    assert any(e.value == "The comparison cannot start: " + plain(
        "Cloud test model needs network access and this machine is offline: leave it out "
        "of the comparison.") for e in at.error)

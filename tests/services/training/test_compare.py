"""Comparing models as a job: both PatchCores measured on the project's own held-out images
(the training split of the same shots and seed), the pick and its reason, no model created; a
crashed candidate is one error row, Cancel stops the running child, what cannot run is
refused at once."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import db.repositories as repo
import services.training.compare as compare
from engine.models import registry
from engine.models.registry import ModelSpec
from services.context import Kensa
from services.data.projects import project_index, require_project
from services.jobs import api
from services.training.compare import (
    comparison_job,
    comparison_result,
    comparison_rows,
    request_comparison,
)
from services.training.fit import TrainingInputError, split_records
from tests.services.conftest import SHOTS

BOTH = ["kensa_patchcore", "anomalib_patchcore"]


@pytest.fixture(scope="module")
def db_kind() -> str:
    """SQLite only: a comparison's time is its child processes (two minutes on both databases),
    and what it stores is one job row, whose PostgreSQL path tests/services/jobs covers."""
    return "sqlite"
SMALL = {"kensa_patchcore": {"image_size": 96}}


def _model_versions(ctx: Kensa, project: str) -> list[Any]:
    with ctx.session(readonly=True) as s:
        return repo.list_model_versions(s, require_project(s, project).id)


def _crash_for(model: str, code: str) -> Callable[[str], list[str]]:
    """A ``worker_command`` whose child for ``model`` runs ``code`` instead of measuring."""
    real = compare.worker_command

    def command(name: str) -> list[str]:
        return [sys.executable, "-c", code] if name == model else real(name)

    return command


def test_both_patchcores_are_measured_on_the_training_split_and_one_is_picked(
        ctx: Kensa, project: str) -> None:
    job_id = request_comparison(ctx, project, candidates=BOTH, shots=SHOTS, seed=0,
                                params=SMALL)
    api.run_inline(ctx, job_id)
    job = api.get_job(ctx, job_id)
    assert (job["kind"], job["status"], job["progress"]) == ("compare_models", "done", 1.0)
    result = comparison_result(ctx, project)
    assert result is not None and result["job_id"] == job_id
    with ctx.session(readonly=True) as s:
        train, held_out = split_records(project_index(s, require_project(s, project)), SHOTS, 0)
    assert result["n_train"] == len(train) == SHOTS
    assert result["n_held_out"] == {"good": sum(r.label == "good" for r in held_out),
                                    "defect": sum(r.label == "defect" for r in held_out)}
    assert result["synthetic"] is False
    assert [r["model"] for r in result["rows"]] == BOTH  # the table's order: Kensa first
    for row in result["rows"]:
        assert row["error"] is None
        assert 0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["pixel_auroc"] <= 1.0
        assert 0.0 < row["f1"] <= 1.0
        assert row["fit_s"] > 0 and row["ms_per_image"] > 0
        assert row["peak_rss_mb"] >= row["base_rss_mb"] > 50
        assert row["n_scored"] == len(held_out) and row["n_train"] == SHOTS
    assert result["pick"] in BOTH
    assert result["reason"].startswith(registry.spec(result["pick"]).title + ":")
    assert "image AUROC" in result["reason"]
    table = comparison_rows(result)
    assert table[0]["pick"] == "★ pick" and table[0]["model"] == result["pick_title"]
    assert _model_versions(ctx, project) == []  # a comparison creates no model


def test_a_crashed_candidate_is_one_error_row_not_a_failed_job(
        ctx: Kensa, project: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare, "worker_command", _crash_for(
        "anomalib_patchcore", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    job_id = request_comparison(ctx, project, candidates=BOTH, shots=SHOTS, params=SMALL)
    api.run_inline(ctx, job_id)
    result = comparison_result(ctx, project)
    assert result is not None
    kensa, stock = result["rows"]
    assert kensa["error"] is None and kensa["image_auroc"] is not None
    assert stock["image_auroc"] is None
    assert stock["error"] == "its process was killed by SIGKILL (out of memory?)"
    assert result["pick"] == "kensa_patchcore"
    assert "the only model that could be measured" in result["reason"]
    assert comparison_rows(result)[1]["note"] == stock["error"]


def test_a_python_error_in_the_child_is_its_message(
        ctx: Kensa, project: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare, "worker_command", _crash_for(
        "kensa_patchcore", "raise SystemExit('the backbone file is damaged')"))
    job_id = request_comparison(ctx, project, candidates=["kensa_patchcore"], shots=SHOTS)
    api.run_inline(ctx, job_id)
    result = comparison_result(ctx, project)
    assert result is not None and result["pick"] is None
    assert result["rows"][0]["error"] == ("its process stopped with exit code 1: the backbone "
                                          "file is damaged")
    assert result["reason"].startswith("No model could be measured (Kensa few-shot PatchCore:")


def test_cancel_kills_the_running_candidate(
        ctx: Kensa, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "child.pid"
    slow = ("import json, os, sys, time\n"
            f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            "print(json.dumps({'stage': 'epoch 1 of 50', 'fraction': 0.02}), flush=True)\n"
            "time.sleep(120)\n")
    monkeypatch.setattr(compare, "worker_command", _crash_for("kensa_patchcore", slow))
    job_id = request_comparison(ctx, project, candidates=BOTH, shots=SHOTS)
    runner = threading.Thread(target=lambda: pytest.raises(api.JobCancelled, api.run_inline,
                                                           ctx, job_id))
    runner.start()
    deadline = time.monotonic() + 60
    while "epoch 1 of 50" not in (api.get_job(ctx, job_id)["stage"] or ""):
        assert time.monotonic() < deadline, api.get_job(ctx, job_id)
        time.sleep(0.1)
    assert api.get_job(ctx, job_id)["stage"] == ("Kensa few-shot PatchCore (1 of 2): epoch 1 "
                                                 "of 50")
    cancelled_at = time.monotonic()
    api.cancel(ctx, job_id)
    runner.join(timeout=30)
    assert not runner.is_alive() and time.monotonic() - cancelled_at < 15
    assert api.get_job(ctx, job_id)["status"] == "cancelled"
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left sleeping
        os.kill(int(pid_file.read_text()), 0)
    assert comparison_result(ctx, project) is None  # the second candidate never ran


def test_no_held_out_defect_measures_on_synthetic_defects(ctx: Kensa, make_project) -> None:
    make_project("plain", n_train=4, n_test_good=2, n_defect=0)
    job_id = request_comparison(ctx, "plain", candidates=["kensa_patchcore"], shots=3,
                                params=SMALL)
    api.run_inline(ctx, job_id)
    result = comparison_result(ctx, "plain")
    assert result is not None and result["synthetic"] is True
    (row,) = result["rows"]
    assert row["error"] is None and row["n_synthetic"] >= 12 and row["n_defect"] > 0
    assert row["pixel_auroc"] is not None  # painted defects come with their masks
    assert "synthetic defects painted into held-out good images" in result["reason"]


def test_what_cannot_run_is_refused_at_once(
        ctx: Kensa, project: str, make_project, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown model 'padim'; known: "):
        request_comparison(ctx, project, candidates=["kensa_patchcore", "padim"])
    with pytest.raises(ValueError, match="Choose at least one model"):
        request_comparison(ctx, project, candidates=[])
    with pytest.raises(ValueError, match="unknown training parameter"):
        request_comparison(ctx, project, params={"anomalib_patchcore": {"image_size": 96}})
    with pytest.raises(TrainingInputError, match="^Choose between 1 and 6 good images"):
        request_comparison(ctx, project, shots=7)
    make_project("tiny", n_train=2, n_test_good=0, n_defect=0)
    with pytest.raises(TrainingInputError, match="^Add 1 more good image or a few defect"):
        request_comparison(ctx, "tiny")

    cloud = ModelSpec("cloud_model", "Cloud model", "Downloads its weights when built. " * 3,
                      True, frozenset(), {}, "engine.models.anomalib_patchcore:X")
    monkeypatch.setitem(registry._SPECS, "cloud_model", cloud)
    assert "cloud_model" not in compare.default_candidates()
    assert "cloud_model" in compare.default_candidates(include_network=True)
    monkeypatch.setattr(compare, "_offline", lambda: True)
    with pytest.raises(ValueError, match="^Cloud model needs network access and this machine "
                                         "is offline: leave it out of the comparison.$"):
        request_comparison(ctx, project, candidates=["kensa_patchcore", "cloud_model"])
    assert api.list_jobs(ctx) == []  # nothing was queued

    first = request_comparison(ctx, project, shots=SHOTS)  # queued for a worker never started
    assert comparison_job(ctx, project)["id"] == first
    offline = comparison_job(ctx, project)["payload"]["candidates"]
    assert offline == compare.default_candidates() and offline[:1] == BOTH[:1]
    assert "anomalib_patchcore" in offline and "cloud_model" not in offline
    with pytest.raises(ValueError, match="already running"):
        request_comparison(ctx, project)


def test_training_settings_are_recorded_only_for_models_that_have_them() -> None:
    from services.training.setup import model_choices, model_params

    assert model_params("kensa_patchcore", backbone="efficientnet_lite0", image_size=256,
                        colour="gray", any_angle=True) == {
        "backbone": "efficientnet_lite0", "image_size": 256, "colour": "gray",
        "views": "any_angle"}
    # stock PatchCore has a backbone but no size, colour rule or angles
    assert model_params("anomalib_patchcore", backbone="efficientnet_lite0", image_size=256,
                        colour="gray", any_angle=True) == {"backbone": "efficientnet_lite0"}
    with pytest.raises(ValueError, match="^epochs must be a whole number between 1 and 500$"):
        model_params("kensa_patchcore", params={"epochs": 0})
    with pytest.raises(ValueError, match="^patience must be a whole number between 0 and"):
        model_params("kensa_patchcore", params={"patience": 2.5})
    with pytest.raises(ValueError, match="image size must be between 128 and 768"):
        model_params("kensa_patchcore", image_size=64)

    ranked = model_choices(5, 2)
    assert ranked[0].name == "kensa_patchcore" and not ranked[0].measured
    assert ranked[0].has("colour") and not ranked[1].has("colour")
    measured = model_choices(5, 2, {"pick": "anomalib_patchcore", "reason": "Measured: why."})
    assert (measured[0].name, measured[0].measured, measured[0].reason) == (
        "anomalib_patchcore", True, "Measured: why.")
    assert [m.name for m in measured[1:]] == [m.name for m in ranked
                                              if m.name != "anomalib_patchcore"]

"""Silent poisoning: every way a model once learned the wrong "good" without a word is refused.

One test per item of issue 8's first section: defect-labelled and suspect bank images, a
manual threshold replaced behind a person's back, degenerate bank images, an edited
``model.json`` (projects and file runs), files rewritten after import, extreme thresholds.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import db.repositories as repo
from engine.data import discover, load_image, sha256_file
from engine.models import ModelStateError
from services.context import Kensa
from services.history.versions import (
    BankUpdateRefused,
    history,
    set_threshold,
    start_bank_update_job,
    update_bank,
)
from services.inference.batches import get_active_model, load_model
from services.jobs import api
from services.training.fit import train_model
from services.training.project import train_project
from services.training.runs import load_run, save_run
from tests.services.conftest import PARAMS, SHOTS
from tests.synthetic import texture, with_defect, write_png


def _versions(ctx: Kensa, project: str) -> list[int]:
    return [b["version"] for b in history(ctx, project)["memory_bank_versions"]]


def _score(ctx: Kensa, project: str, image: Path) -> float:
    return float(load_model(get_active_model(ctx, project)).model.score(
        [load_image(image)]).scores[0])


def test_a_defect_labelled_image_is_refused(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path, tmp_path: Path,
    new_goods: Any,
) -> None:
    # the project's own defect, renamed and mixed with real goods: known by content
    folder = new_goods(2)
    crack = shutil.copy(dataset / "test" / "spot" / "spot_000.png", folder / "fine_03.png")
    with pytest.raises(BankUpdateRefused) as refused:
        update_bank(ctx, project, [folder], force_suspect=True)  # no override for labels
    message = str(refused.value)
    assert f"{Path(crack).name} is labelled defect in this project" in message
    assert str(dataset) not in message  # files are named, server paths are not shown
    assert "spot_000.png" in message and "new_00.png" not in message
    assert _versions(ctx, project) == [1]  # nothing written


def test_a_suspect_image_is_refused_with_its_score_unless_a_person_confirms(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any
) -> None:
    folder = new_goods(2)
    rng = np.random.default_rng(42)
    suspect = write_png(folder / "crack_3.png", with_defect(rng, texture(rng, 96))[0])
    score = _score(ctx, project, suspect)
    threshold = history(ctx, project)["thresholds"][-1]["raw_value"]
    assert score >= threshold  # an unlabelled defect: only its score gives it away
    with pytest.raises(BankUpdateRefused) as refused:
        update_bank(ctx, project, [folder])
    assert (f"{suspect.name} scores {score:.4g}, above the threshold {threshold:.4g}: it looks "
            "like a defect; add it only if a person confirms it is good") in str(refused.value)
    assert _versions(ctx, project) == [1]

    bank = update_bank(ctx, project, [folder], force_suspect=True)
    assert bank["version"] == 2 and len(bank["source_images"]) == 3
    assert [(Path(f["path"]).name, f["score"]) for f in bank["forced"]] == [
        ("crack_3.png", pytest.approx(score))]
    assert "crack_3.png" in bank["note"] and "confirmation" in bank["note"]
    with ctx.session(readonly=True) as s:
        params = repo.get_threshold(s, bank["threshold"]["id"]).params
    assert Path(params["forced"][0]["path"]).name == "crack_3.png"


def test_a_manual_threshold_is_kept_and_said_so(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any
) -> None:
    validated = history(ctx, project)["thresholds"][-1]["raw_value"]
    manual = round(validated * 1.2, 3)
    set_threshold(ctx, project, manual, created_by="alice")
    bank = update_bank(ctx, project, [new_goods(2)])
    thr = bank["threshold"]
    assert (thr["method"], thr["raw_value"]) == ("manual", pytest.approx(manual))
    with ctx.session(readonly=True) as s:
        params = repo.get_threshold(s, thr["id"]).params
    assert params["kept_manual"] == pytest.approx(manual)
    assert bank["threshold_note"] == (
        f"your manual threshold {manual:.4g} was kept; the re-validated suggestion is "
        f"{params['suggested']:.4g}")
    # a validated threshold is replaced, and the result says from what to what
    bank3 = update_bank(ctx, project, [new_goods(1, seed=300)])
    assert bank3["threshold"]["method"] == "manual"  # still the person's choice
    set_threshold(ctx, project, validated, method="f1_optimal")
    bank4 = update_bank(ctx, project, [new_goods(1, seed=400)])
    assert bank4["threshold"]["method"] == "f1_optimal"
    assert bank4["threshold_note"].startswith(f"threshold {validated:.4g} -> ")


def test_degenerate_bank_images_are_refused_by_name(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any
) -> None:
    folder = new_goods(1)
    tiny = write_png(folder / "tiny.png", np.full((1, 1, 3), 128, np.uint8))
    flat = write_png(folder / "flat.png", np.full((96, 96, 3), 90, np.uint8))
    with pytest.raises(BankUpdateRefused) as refused:
        update_bank(ctx, project, [folder], force_suspect=True)
    message = str(refused.value)
    assert "2 image(s) refused" in message
    assert f"{Path(tiny).name} is only 1x1" in message
    assert f"{Path(flat).name} is a single" in message
    assert "new_00.png" not in message
    assert _versions(ctx, project) == [1]
    # through the job as well (what pages and the CLI use): the job fails with that message
    job_id = start_bank_update_job(ctx, project, [flat])
    with pytest.raises(RuntimeError, match="flat.png"):
        api.run_inline(ctx, job_id)
    assert api.get_job(ctx, job_id)["status"] == "failed"


def test_an_edited_model_json_is_refused_on_load(
    ctx: Kensa, project: str, trained: dict[str, Any], dataset: Path, tmp_path: Path
) -> None:
    active = get_active_model(ctx, project)
    assert "model.json" in active.files  # recorded with its sha256 in the database
    description = active.state_dir / "model.json"
    payload = json.loads(description.read_text())
    payload["config"]["image_size"] = 128  # the edit that moved a score 27.11 -> 49.50
    payload["unknown_key"] = 1
    description.write_text(json.dumps(payload))
    with pytest.raises(ModelStateError, match="model.json failed its integrity check"):
        load_model(active)

    # a file-based run: run.json keeps the sha256 of model.json and threshold.json
    index = discover(dataset)
    run_dir = tmp_path / "run"
    outcome = train_model(index, shots=SHOTS, params=PARAMS)
    save_run(outcome, run_dir, dataset, SHOTS, 0)
    load_run(run_dir)
    original = (run_dir / "threshold.json").read_text()
    edited = json.loads(original)
    edited["value"] = 1e308
    (run_dir / "threshold.json").write_text(json.dumps(edited))
    with pytest.raises(ModelStateError, match="threshold.json failed its integrity check"):
        load_run(run_dir)
    (run_dir / "threshold.json").write_text(original)
    run = json.loads((run_dir / "run.json").read_text())
    del run["model_files"]  # a run saved before model_files: its artifacts list still counts
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "model.json").write_text(description.read_text())
    with pytest.raises(ModelStateError, match="model.json failed its integrity check"):
        load_run(run_dir)


def test_a_file_rewritten_after_import_is_refused_at_training(
    ctx: Kensa, project: str, dataset: Path
) -> None:
    goods = sorted((dataset / "train" / "good").glob("*.png"))
    recorded = {str(p): sha256_file(p) for p in goods}
    changed = goods[2]
    write_png(changed, texture(np.random.default_rng(999), 96))  # same name, new bytes
    mv = train_project(ctx, project, shots=None, params=PARAMS)  # every good image
    assert mv["status"] == "done"
    assert str(changed) not in mv["metrics"]["shots"] and len(mv["metrics"]["shots"]) == 5
    (reason,) = [r for r in mv["metrics"]["skipped"] if str(changed) in r]
    assert "changed on disk since it was imported" in reason
    assert recorded[str(changed)][:12] in reason and "re-scan the project" in reason
    (bank,) = history(ctx, project)["memory_bank_versions"]
    assert set(bank["source_images"]) == {recorded[str(p)] for p in goods if p != changed}
    for i, p in enumerate(goods):
        write_png(p, texture(np.random.default_rng(500 + i), 96))
    with pytest.raises(RuntimeError, match="could be read and used .*changed on disk since"):
        train_project(ctx, project, shots=None, params=PARAMS)


def test_extreme_thresholds_are_refused_unless_confirmed(
    ctx: Kensa, project: str, trained: dict[str, Any]
) -> None:
    for bad in (-1.0, 0.0, 1e308):
        with pytest.raises(ValueError, match="outside the sane range .* confirm it explicitly"):
            set_threshold(ctx, project, bad)
    with pytest.raises(ValueError, match="finite"):
        set_threshold(ctx, project, math.inf, confirm_extreme=True)
    assert len(history(ctx, project)["thresholds"]) == 1  # nothing stored
    row = set_threshold(ctx, project, 0.0, confirm_extreme=True, created_by="bob")
    assert row["raw_value"] == 0.0 and row["active"]
    with ctx.session(readonly=True) as s:
        assert repo.get_threshold(s, row["id"]).params["confirmed_extreme"] is True
    validated = history(ctx, project)["thresholds"][0]["raw_value"]
    sane = set_threshold(ctx, project, validated * 1.05)
    with ctx.session(readonly=True) as s:
        assert "confirmed_extreme" not in repo.get_threshold(s, sane["id"]).params

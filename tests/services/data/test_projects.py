"""services.data.projects: importing a dataset folder into a project and its status card."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import db.repositories as repo
from engine.data import DatasetError, sha256_file
from services.context import Kensa
from services.data.projects import (
    ProjectNotFound,
    create_project,
    get_project,
    list_projects,
    project_status,
)
from tests.synthetic import texture, write_png


def test_create_indexes_every_image_with_its_facts(ctx: Kensa, dataset: Path) -> None:
    report = create_project(ctx, "widgets", dataset)
    assert report.created and report.found == 12 and report.added == 12
    assert report.problems == []
    with ctx.session(readonly=True) as s:
        images = repo.list_images(s, report.project_id)
    assert len(images) == 12
    by_name = {Path(i.path).name: i for i in images if "train" in i.path}
    train = by_name["good_000.png"]
    assert train.split == "train" and train.label == "good" and train.mask_path is None
    assert train.sha256 == sha256_file(dataset / "train" / "good" / "good_000.png")
    assert (train.width, train.height) == (96, 96)
    defects = [i for i in images if i.label == "defect"]
    assert len(defects) == 3
    assert all(i.split == "test" and i.defect_type == "spot" for i in defects)
    assert all(i.mask_path and Path(i.mask_path).is_file() for i in defects)
    assert [p["name"] for p in list_projects(ctx)] == ["widgets"]
    assert get_project(ctx, "widgets")["data_root"] == str(dataset.resolve())


def test_reimport_adds_only_new_images_and_records_problems(ctx: Kensa, dataset: Path) -> None:
    create_project(ctx, "widgets", dataset)
    again = create_project(ctx, "widgets", dataset)
    assert not again.created and again.found == 12 and again.added == 0
    write_png(dataset / "test" / "good" / "good_new.png", texture(np.random.default_rng(9), 96))
    (dataset / "test" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shutil.copy(dataset / "train" / "good" / "good_000.png", dataset / "test" / "good" / "dup.png")
    third = create_project(ctx, "widgets", dataset)
    assert third.added == 1
    kinds = {Path(p["path"]).name: p["kind"] for p in third.problems}
    assert kinds["broken.png"] == "unreadable" and kinds["dup.png"] == "duplicate"
    with ctx.session(readonly=True) as s:
        assert repo.count_images(s, third.project_id) == 13
        stored = {Path(p.path).name: p.message for p in repo.list_problems(s, third.project_id)}
    assert "broken.png" in stored["broken.png"]  # the message names the file
    assert project_status(ctx, "widgets")["problems"] == 2


def test_bad_input_is_refused_with_a_clear_message(ctx: Kensa, dataset: Path,
                                                   tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="folder not found"):
        create_project(ctx, "x", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no dataset found"):
        create_project(ctx, "x", tmp_path / "empty")
    create_project(ctx, "widgets", dataset)
    other = shutil.copytree(dataset, tmp_path / "other")
    with pytest.raises(ValueError, match="already imports"):
        create_project(ctx, "widgets", other)
    with pytest.raises(ProjectNotFound, match="project create nope"):
        project_status(ctx, "nope")
    assert [p["name"] for p in list_projects(ctx)] == ["widgets"]


def test_flat_layout_goods_train_defects_test(ctx: Kensa, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for i in range(3):
        write_png(tmp_path / "flat" / "good" / f"g{i}.png", texture(rng, 64))
    write_png(tmp_path / "flat" / "defect" / "d0.png", texture(rng, 64))
    report = create_project(ctx, "flat", tmp_path / "flat")
    with ctx.session(readonly=True) as s:
        counts = repo.image_counts(s, report.project_id)
    assert counts == {("train", "good", None): 3, ("test", "defect", None): 1}


def test_status_before_training(ctx: Kensa, project: str) -> None:
    status = project_status(ctx, project)
    assert status["images"] == {
        "total": 12,
        "per_split": {"test": 6, "train": 6},
        "per_label": {"defect": 3, "good": 9},
        "per_defect_type": {"spot": 3},
    }
    assert status["active_model_version"] is None and status["active_bank_version"] is None
    assert status["active_threshold"] is None and status["last_batch"] is None
    assert status["training"] == [] and status["problems"] == 0

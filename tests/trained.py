"""Trained projects for tests, made by the real services once per test session.

Page and report tests need finished trainings: stored predictions, heatmaps, a bank and a
threshold. Writing those rows by hand drifts from what training really stores, so a tiny real
training (96 px images scored at 96 px, a few seconds each) builds a template ``KENSA_HOME`` on
SQLite once per session, and each test works on its own copy (:func:`copy_home`).

Tests that need a score pattern (an overlap, a worst error) take it from the stored scores
(:func:`stored_scores`) and assert relations, never hand-picked numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from services.context import Kensa
from services.data.projects import create_project
from tests.synthetic import make_mvtec

#: Small and fast: 96 px images scored at 96 px (a 12 x 12 feature grid).
PARAMS = {"image_size": 96}
#: The demo trained by browser walks whose subject is not the detector (lots, drift, updates,
#: roll-back): 256 px instead of the 512-px default takes 30-50 s off each walk. The walks that
#: check what a first user gets (tests/e2e/test_browser.py, test_first_user.py) train at the
#: defaults through the page.
DEMO_PARAMS = {"image_size": 256}
#: name -> (images per split, trainings): "widgets" has good and defect test images and two
#: model versions (an older one and the one in use); "goods" has no defect images at all.
PROJECTS: dict[str, tuple[dict[str, int], int]] = {
    "widgets": ({"n_train": 3, "n_test_good": 4, "n_defect": 4}, 2),
    "goods": ({"n_train": 3, "n_test_good": 3, "n_defect": 0}, 1),
}


def build_template(root: Path) -> Path:
    """Import and train every project of :data:`PROJECTS` under ``root``; returns the home.

    The images stay outside the home (``root/data``): every copy reads them, none writes them.
    Torch runs on one thread meanwhile (two wait on each other on a small shared machine).
    """
    from services.training.project import train_project

    home = root / "home"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ctx = Kensa.create(home, f"sqlite:///{home / 'kensa.db'}")
    try:
        for seed, (name, (sizes, trainings)) in enumerate(PROJECTS.items()):
            data = make_mvtec(root / "data" / name, size=96, seed=seed, **sizes)
            create_project(ctx, name, data)
            for run in range(trainings):
                train_project(ctx, name, shots=None, seed=run, params=PARAMS)
    finally:
        ctx.close()
        torch.set_num_threads(threads)
    return home


def copy_home(template: Path, dest: Path) -> Path:
    """A private copy of a template home (its SQLite database included) at ``dest``."""
    return Path(shutil.copytree(template, dest))


def stored_scores(ctx: Kensa, project: str, model_version_id: int) -> dict[str, tuple[str, float]]:
    """File name -> (label, raw score) of a model version's stored validation predictions, read
    through the inference service (not the evaluation report that the tests check)."""
    from services.inference.batches import batch_predictions, validation_batch_name

    rows = batch_predictions(ctx, project, validation_batch_name(model_version_id))
    return {Path(r["image_path"]).name: (r["label"], r["raw_score"]) for r in rows}

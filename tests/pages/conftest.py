"""Fixtures for the page tests: a private KENSA_HOME per test and small generated projects.

The app reads KENSA_HOME / DATABASE_URL from the environment and caches one context per
value, so each test gets its own data directory and database. The bundled demo is switched
off (``KENSA_DEMO=0``) except where a test asks for it, so "empty" really means empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.context import Kensa
from services.data.projects import create_project
from tests.synthetic import make_mvtec

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 60


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("KENSA_HOME", str(path))
    monkeypatch.setenv("KENSA_DEMO", "0")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return path


@pytest.fixture
def ctx(home: Path) -> Kensa:
    context = Kensa.create(home)
    yield context
    context.close()


@pytest.fixture
def make_project(ctx: Kensa, tmp_path: Path) -> Callable[..., Path]:
    """``make_project(name, n_train=..., ...)``: a generated MVTec folder imported as a project."""

    def make(name: str = "widgets", **sizes: int) -> Path:
        root = make_mvtec(tmp_path / "data" / name, **sizes)
        create_project(ctx, name, root)
        return root

    return make


def open_app(page: str | None = None, project: str | None = None) -> AppTest:
    """Run the app once (home), then switch to ``page`` with ``project`` chosen."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if project is not None:
        at.session_state["project"] = project
    if page is not None:
        at.switch_page(page)
        at.run()
    return at


def texts(at: AppTest) -> str:
    """Everything a user reads on the page (markdown, captions, alerts, metrics), as one text."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning",
                 "error", "success", "exception"):
        parts.extend(str(getattr(e, "value", "")) for e in getattr(at, kind))
    parts.extend(f"{m.label}: {m.value}" for m in at.metric)
    parts.extend(str(getattr(e, "value", "")) for e in at.sidebar.markdown)
    return "\n".join(parts)


def fake_training(ctx: Kensa, project: str, scores: dict[str, float] | None = None,
                  threshold: float = 0.5, metrics: dict | None = None) -> int:
    """Rows of a finished training, as project training stores them, without training.

    Every test image of the project gets a validation prediction: goods score low, defects
    high (``scores`` overrides by file name), plus an 8-bit heatmap PNG per image. Returns
    the model version id. Page tests use it to stay fast; the browser test trains for real.
    """
    import cv2
    import numpy as np

    import db.repositories as repo
    from services.inference.batches import validation_batch_name

    scores = scores or {}
    with ctx.session() as s:
        proj = repo.get_project_by_name(s, project)
        images = repo.list_images(s, proj.id, split="test")
        mv = repo.create_model_version(s, proj.id, "kensa_patchcore", "efficientnet_lite0",
                                       {"shots": None, "seed": 0, "model": {"image_size": 96}})
        mv_id, project_id = mv.id, proj.id
    rng = np.random.default_rng(mv_id)
    rows, goods = [], []
    for i, img in enumerate(images):
        name = img.path.rsplit("/", 1)[-1]
        default = (0.3 + 0.02 * i) if img.label == "good" else (0.6 + 0.05 * i)
        score = scores.get(name, default)
        if img.label == "good":
            goods.append(score)
        heat = ctx.validation_heatmap(project_id, mv_id, img.sha256)
        heat.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(heat), rng.integers(0, 255, (24, 24), dtype=np.uint8))
        rows.append({
            "image_sha256": img.sha256, "image_path": img.path, "raw_score": score,
            "normalized_score": min(1.0, 0.5 * score / threshold),
            "verdict": "defect" if score >= threshold else "good", "confidence": 0.9,
            "regions": [], "heatmap_path": ctx.stored(heat),
        })
    model_dir = ctx.model_dir(project_id, mv_id)
    with ctx.session() as s:
        repo.start_model_version(s, mv_id, stage="starting")
        repo.finish_model_version(
            s, mv_id, "done", fit_seconds=1.0, artifact_dir=ctx.stored(model_dir),
            metrics=metrics if metrics is not None else {
                "image_auroc": 0.95, "image_ap": 0.9, "image_f1": 0.85,
                "pixel_auroc": 0.8, "aupro": 0.7,
                "threshold": {"method": "f1_optimal", "value": threshold, "params": {}},
                "shots": ["a.png", "b.png"],
            },
        )
        bank = repo.add_bank_version(s, mv_id, kind="initial", vector_count=100, dim=8,
                                     file_path=ctx.stored(model_dir / "bank.safetensors"),
                                     sha256="0" * 64)
        thr = repo.add_threshold(s, bank.id, method="f1_optimal", raw_value=threshold,
                                 normalized_value=0.5,
                                 params={"normal_scores": goods or [0.1, 0.2],
                                         "calibration": threshold},
                                 created_by="training")
        batch = repo.create_batch(s, project_id, validation_batch_name(mv_id), "validation")
        repo.add_predictions(s, batch.id, [
            {**r, "bank_version_id": bank.id, "threshold_id": thr.id} for r in rows
        ])
    return mv_id

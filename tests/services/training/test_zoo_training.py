"""anomalib zoo models in a project: trained as a job, saved as a verified state version,
scored, explained (map and regions, no nearest patches), refused what they cannot do; the
network-only ones are refused before anything is queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import db.repositories as repo
import engine.models.anomalib_zoo as zoo
from engine.data import sha256_file
from services.context import Kensa
from services.history.versions import update_bank
from services.inference.batches import score_batch
from services.inference.explain import explain_image
from services.training.project import request_training, run_training


def test_padim_trains_scores_and_explains_in_a_project(
    ctx: Kensa, project: str, dataset: Path, new_goods: Any
) -> None:
    mv_id = request_training(ctx, project, shots=4, algorithm="anomalib_padim",
                             params={"image_size": 96})
    mv = run_training(ctx, mv_id)
    assert (mv["status"], mv["algorithm"], mv["backbone"]) == (
        "done", "anomalib_padim", "efficientnet_lite0")
    assert 0.0 <= mv["metrics"]["image_auroc"] <= 1.0
    model_dir = ctx.resolve(mv["artifact_dir"])
    with ctx.session(readonly=True) as s:
        (state,) = repo.list_state_versions(s, mv_id)
    assert state.state_format == "anomalib_padim" and state.vector_count is None
    assert state.files == {name: sha256_file(model_dir / name)
                           for name in ("model.json", zoo.WEIGHTS_FILE)}

    result = score_batch(ctx, project, dataset / "test", "line-1")
    assert result.problems == [] and result.scored == 6
    defects = [p["raw_score"] for p in result.predictions if "spot" in p["image_path"]]
    goods = [p["raw_score"] for p in result.predictions if "spot" not in p["image_path"]]
    assert min(defects) > max(goods)  # drawn spots on a regular texture: a clear case

    spot = next(iter(sorted((dataset / "test").rglob("*spot*.png"))))
    explained = explain_image(ctx, project, path=spot)
    assert explained.regions and all(r.nearest == [] for r in explained.regions)

    with pytest.raises(ValueError, match="cannot learn new good images after training"):
        update_bank(ctx, project, [new_goods(1)])


def test_a_trained_model_reports_its_epochs_through_the_run(ctx: Kensa, project: str) -> None:
    stages: list[str] = []
    mv_id = request_training(ctx, project, shots=2, algorithm="anomalib_cflow",
                             params={"image_size": 128, "epochs": 2, "batch_size": 2})
    mv = run_training(ctx, mv_id, progress=lambda stage, fraction: stages.append(stage))
    assert mv["status"] == "done"
    assert mv["params"]["model"] == {"image_size": 128, "epochs": 2, "batch_size": 2}
    assert any("epoch 2 of 2" in stage for stage in stages)


def test_a_network_only_model_is_refused_before_queueing(
    ctx: Kensa, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zoo, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ValueError, match="EfficientAd needs network access: it downloads"):
        request_training(ctx, project, algorithm="anomalib_efficient_ad")
    with ctx.session(readonly=True) as s:
        assert repo.list_model_versions(s, 1) == []

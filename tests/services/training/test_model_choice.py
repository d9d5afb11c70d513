"""Project training through the registry: stock anomalib PatchCore trains, saves, loads and
scores end to end; what it cannot do (grow its bank) is refused in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import db.repositories as repo
from engine.data import sha256_file
from services.context import Kensa
from services.history.versions import history, update_bank
from services.inference.batches import score_batch
from services.training.project import request_training, run_training


def test_stock_anomalib_patchcore_trains_saves_loads_and_scores(
    ctx: Kensa, project: str, dataset: Path, new_goods: Any
) -> None:
    mv_id = request_training(ctx, project, shots=2, algorithm="anomalib_patchcore")
    mv = run_training(ctx, mv_id)
    assert (mv["status"], mv["algorithm"]) == ("done", "anomalib_patchcore")
    model_dir = ctx.resolve(mv["artifact_dir"])
    with ctx.session(readonly=True) as s:
        (state,) = repo.list_state_versions(s, mv_id)
        assert repo.get_provenance(s, mv_id, range(1000)) == []  # no provenance to offer
    assert state.state_format == "anomalib_patchcore" and state.vector_count > 0
    assert state.files == {name: sha256_file(model_dir / name)
                           for name in ("model.json", "anomalib_bank.safetensors")}

    result = score_batch(ctx, project, dataset / "test", "line-1")  # loads through the registry
    assert result.problems == [] and result.scored == 6 and result.bank_version == 1
    defects = [p["raw_score"] for p in result.predictions if "spot" in p["image_path"]]
    goods = [p["raw_score"] for p in result.predictions if "spot" not in p["image_path"]]
    assert min(defects) > 0 and len(goods) == 3

    with pytest.raises(ValueError, match="cannot learn new good images after training"):
        update_bank(ctx, project, [new_goods(1)])
    assert len(history(ctx, project)["memory_bank_versions"]) == 1


def test_unknown_model_is_refused_before_queueing(ctx: Kensa, project: str) -> None:
    with pytest.raises(ValueError, match="unknown model 'padim'; known: kensa_patchcore"):
        request_training(ctx, project, algorithm="padim")
    with pytest.raises(ValueError, match="unknown training parameter.*image_size for anomalib"):
        request_training(ctx, project, params={"image_size": 96},
                         algorithm="anomalib_patchcore")
    with ctx.session(readonly=True) as s:
        assert repo.list_model_versions(s, 1) == []

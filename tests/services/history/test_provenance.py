"""Provenance by file: a bank vector's image id maps to a stored record (path, sha256, view,
grid) through training, updates and rollbacks, and ids are never issued twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import db.repositories as repo
from engine.data import load_image, sha256_file
from services.context import Kensa
from services.history.provenance import provenance
from services.history.versions import rollback, update_bank
from services.inference.batches import get_active_model, load_model

ROW, COL = 5, 7  # a cell of the 12 x 12 feature grid of a 96 px image


def _record_ids(ctx: Kensa, model_version_id: int) -> list[int]:
    with ctx.session(readonly=True) as s:
        return [r.record_id for r in repo.get_provenance(s, model_version_id, range(10_000))]


def test_nearest_vector_maps_back_to_its_file_and_position_after_updates_and_rollback(
    ctx: Kensa, project: str, trained: dict[str, Any], new_goods: Any
) -> None:
    mv = trained["id"]
    shots = trained["metrics"]["shots"]
    issued_by_training = _record_ids(ctx, mv)
    assert issued_by_training == list(range(4 * 8))  # 4 shots x 8 dihedral views

    v2 = update_bank(ctx, project, [new_goods(2, seed=100)])
    v3 = update_bank(ctx, project, [new_goods(2, seed=200)])
    after_updates = _record_ids(ctx, mv)
    assert after_updates == list(range(4 * 8 + 2 * 2 * 8))  # every (image, view), used or not
    back = rollback(ctx, project, v2["version"])
    assert (back["kind"], back["parent"]) == ("rollback", v2["version"])

    # a patch cut from a known training image: its own vector is in the bank, at distance 0
    shot = shots[1]
    active = get_active_model(ctx, project)
    model = load_model(active).model
    distances, indices, (grid, _) = model.patch_distances(load_image(shot))
    assert grid == (12, 12)
    cell = ROW * grid[1] + COL
    assert float(distances[cell, 0]) < 1e-3
    record_id, row, col = (int(v) for v in model.bank.provenance[int(indices[cell, 0])])
    record = provenance(ctx, project, active.bank_version_id, [record_id])[record_id]
    assert (record.path, record.sha256) == (shot, sha256_file(shot))
    assert (row, col, record.view) == (ROW, COL, "rot0")
    assert (record.grid_height, record.grid_width, record.height, record.width) == (12, 12, 96,
                                                                                     96)

    # an image that entered with update 1 still maps to its file after update 2's rollback
    added = {int(i) for i in model.bank.provenance[:, 0]} - set(issued_by_training)
    records = provenance(ctx, project, active.bank_version_id, added)
    assert records and set(records) == added
    assert {Path(r.path).parent.name for r in records.values()} == {"new_goods_100"}
    assert all(r.sha256 == sha256_file(r.path) for r in records.values())

    # the next update does not reuse the ids of the rolled-back version (v3), nor any other
    v5 = update_bank(ctx, project, [new_goods(1, seed=300)])
    ids = _record_ids(ctx, mv)
    assert len(ids) == len(set(ids)) == len(after_updates) + 8
    assert min(set(ids) - set(after_updates)) == max(after_updates) + 1
    with ctx.session(readonly=True) as s:
        introduced = {r.record_id: r.state_version_id
                      for r in repo.get_provenance(s, mv, ids)}
    assert {introduced[i] for i in ids if i >= 48} == {v3["id"], v5["id"]}


def test_provenance_refuses_a_state_of_another_project(
    ctx: Kensa, project: str, trained: dict[str, Any], make_project: Any
) -> None:
    make_project("other", n_train=2, n_test_good=1, n_defect=1)
    state = get_active_model(ctx, project).bank_version_id
    assert set(provenance(ctx, project, state, [0, 1, 99_999])) == {0, 1}
    with pytest.raises(LookupError, match="no state version"):
        provenance(ctx, "other", state, [0])

"""Provenance by file: every bank vector's image id maps to a stored record.

The engine numbers records (one per training image and view) from a ``first_id`` the caller
gives; for projects the database issues it (max issued id + 1 per model version), so an id
is never reused across updates and rollbacks, and a record stays after a rollback (its id
stays spent). Records are written in the same transaction as the state version that issued
them. :func:`provenance` is what explanations ("nearest normal patch") read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.orm import Session

import db.repositories as repo
from engine.models import AnomalyModel, Capability, ProvenanceRecord
from services.context import Kensa
from services.data.projects import require_project


def state_columns(model: AnomalyModel) -> dict[str, Any]:
    """``vector_count`` / ``dim`` of a state row: set for memory-bank models only."""
    if Capability.MEMORY_BANK not in model.capabilities:
        return {"vector_count": None, "dim": None}
    return {"vector_count": int(model.vector_count), "dim": int(model.dim)}  # type: ignore[attr-defined]


def record_rows(records: Sequence[ProvenanceRecord]) -> list[dict[str, Any]]:
    """``provenance_records`` rows of engine records (their ``id`` is the record id)."""
    rows = []
    for r in records:
        row = r.as_dict()
        row["record_id"] = row.pop("id")
        rows.append(row)
    return rows


def store_records(session: Session, model_version_id: int, state_version_id: int,
                  records: Sequence[ProvenanceRecord]) -> int:
    """Write the records a new state version issued (inside the caller's transaction).

    Refuses records whose ids the database did not hand out next: another writer got there
    first, and two records under one id would make provenance ambiguous.
    """
    if not records:
        return 0
    expected = repo.next_provenance_id(session, model_version_id)
    first = min(r.id for r in records)
    if first != expected:
        raise RuntimeError(f"provenance ids start at {first} but the next free id is {expected}; "
                           "another update ran meanwhile: run this one again")
    return repo.add_provenance(session, model_version_id, state_version_id, record_rows(records))


def provenance(ctx: Kensa, project: str, state_version_id: int, record_ids: Iterable[int]
               ) -> dict[int, ProvenanceRecord]:
    """``{record id: record}`` for the ids a state's bank vectors carry (``provenance[:, 0]``).

    Ids of the state's model version only; an id that was never issued is absent, so a caller
    can tell "unknown" from "found".
    """
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        state = repo.get_state_version(s, state_version_id)
        mv = repo.get_model_version(s, state.model_version_id) if state else None
        if state is None or mv is None or mv.project_id != proj.id:
            raise LookupError(f"project {project!r} has no state version {state_version_id}")
        rows = repo.get_provenance(s, state.model_version_id, record_ids)
        return {
            r.record_id: ProvenanceRecord(r.record_id, r.path, r.sha256, r.view, r.height,
                                          r.width, r.grid_height, r.grid_width)
            for r in rows
        }

"""Repository functions: every read and write of Kensa's tables goes through here.

Each function takes the caller's ``Session`` and never commits: the service layer owns the
transaction (``db.session.session_scope``), so a use case that touches several tables
commits or rolls back as one. Functions flush when the caller needs generated ids.

History is append-only: a new state version or threshold deactivates the previous one and
keeps it. Partial unique indexes guarantee at most one active state per model version and
one active threshold per state version; on PostgreSQL the parent row is locked
(``SELECT ... FOR UPDATE``) so concurrent writers queue instead of colliding, on SQLite the
write transaction's ``BEGIN IMMEDIATE`` already serializes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, case, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import (
    ACTIVE_STATUSES,
    AugmentationPreset,
    Base,
    Batch,
    DatasetProblem,
    DriftReport,
    Image,
    ModelVersion,
    Prediction,
    Project,
    Provenance,
    RunStatus,
    StateKind,
    StateVersion,
    Threshold,
    Verdict,
    utcnow,
)

M = TypeVar("M", bound=Base)


# --------------------------------------------------------------------------- helpers


def _page(stmt: Select[Any], offset: int, limit: int | None) -> Select[Any]:
    stmt = stmt.offset(offset) if offset else stmt
    return stmt.limit(limit) if limit is not None else stmt


def _insert_new(
    session: Session, model: type[M], rows: list[dict[str, Any]], unique_cols: Sequence[str]
) -> int:
    """Bulk INSERT that skips rows already present by ``unique_cols``; returns rows inserted.

    ON CONFLICT DO NOTHING rather than check-then-insert: re-importing a folder or resuming a
    batch is a no-op for what is already there, even with a concurrent writer.
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        stmt = sqlite.insert(model).on_conflict_do_nothing(index_elements=list(unique_cols))
    elif dialect == "postgresql":
        stmt = postgresql.insert(model).on_conflict_do_nothing(index_elements=list(unique_cols))
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(dialect)
    return len(session.execute(stmt.returning(model.id), rows).all())  # type: ignore[attr-defined]


def _rows(model: type[M], items: Iterable[Mapping[str, Any]], **fixed: Any) -> list[dict[str, Any]]:
    """Row dicts for a bulk insert; an unknown key is an error (bulk INSERT would drop it)."""
    columns = set(model.__table__.columns.keys())
    rows = [{**item, **fixed} for item in items]
    unknown = set().union(*rows) - columns if rows else set()
    if unknown:
        raise ValueError(f"unknown {model.__tablename__} columns: {sorted(unknown)}")
    return rows


def _update_row(session: Session, model: type[M], row_id: int, *where: Any, **values: Any) -> bool:
    """One UPDATE of one row by id (plus conditions), in a single statement so concurrent
    writers cannot interleave a read and a write. Returns whether the row matched.

    The row's object, if this session holds it, has those attributes expired: the next read
    sees the database (ORM "evaluate" sync skips attributes never loaded, e.g. NULL columns
    of a freshly inserted row).
    """
    pk = model.id  # type: ignore[attr-defined]
    result = session.execute(
        update(model)
        .where(pk == row_id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    obj = session.identity_map.get(session.identity_key(model, row_id))
    if obj is not None:
        session.expire(obj, list(values))
    return result.rowcount > 0


def _lock(session: Session, model: type[M], row_id: int) -> None:
    """Lock a parent row for this transaction (PostgreSQL); raise if it does not exist."""
    found = session.execute(
        select(model.id).where(model.id == row_id).with_for_update()  # type: ignore[attr-defined]
    ).scalar_one_or_none()
    if found is None:
        raise LookupError(f"{model.__tablename__} id={row_id} does not exist")


# --------------------------------------------------------------------------- projects


def create_project(
    session: Session, name: str, data_root: str, settings: Mapping[str, Any] | None = None
) -> Project:
    project = Project(name=name, data_root=data_root, settings=dict(settings or {}))
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, project_id: int) -> Project | None:
    return session.get(Project, project_id)


def get_project_by_name(session: Session, name: str) -> Project | None:
    return session.execute(select(Project).where(Project.name == name)).scalar_one_or_none()


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.name)))


def update_project_settings(session: Session, project_id: int, settings: Mapping[str, Any]) -> None:
    """Replace the settings JSON (JSON columns do not track in-place mutation)."""
    _update_row(session, Project, project_id, settings=dict(settings))


def delete_project(session: Session, project_id: int) -> bool:
    """Delete a project and, by ON DELETE CASCADE, everything recorded under it."""
    return session.execute(delete(Project).where(Project.id == project_id)).rowcount > 0


# --------------------------------------------------------------------------- images


def add_images(session: Session, project_id: int, images: Iterable[Mapping[str, Any]]) -> int:
    """Insert images (dicts of Image columns); an sha256 already in the project is skipped.

    Returns how many rows were new.
    """
    return _insert_new(
        session, Image, _rows(Image, images, project_id=project_id), ("project_id", "sha256")
    )


def _image_filter(
    stmt: Select[Any],
    project_id: int,
    split: str | None,
    label: str | None,
    defect_type: str | None,
) -> Select[Any]:
    stmt = stmt.where(Image.project_id == project_id)
    if split is not None:
        stmt = stmt.where(Image.split == split)
    if label is not None:
        stmt = stmt.where(Image.label == label)
    if defect_type is not None:
        stmt = stmt.where(Image.defect_type == defect_type)
    return stmt


def list_images(
    session: Session,
    project_id: int,
    *,
    split: str | None = None,
    label: str | None = None,
    defect_type: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[Image]:
    """Images in a stable order (path, id) for pagination; filters are exact matches."""
    stmt = _image_filter(select(Image), project_id, split, label, defect_type)
    return list(session.scalars(_page(stmt.order_by(Image.path, Image.id), offset, limit)))


def count_images(
    session: Session,
    project_id: int,
    *,
    split: str | None = None,
    label: str | None = None,
    defect_type: str | None = None,
) -> int:
    stmt = _image_filter(select(func.count(Image.id)), project_id, split, label, defect_type)
    return session.execute(stmt).scalar_one()


def image_counts(session: Session, project_id: int) -> dict[tuple[str, str, str | None], int]:
    """Counts keyed by (split, label, defect_type), for the dataset summary in one query."""
    rows = session.execute(
        select(Image.split, Image.label, Image.defect_type, func.count(Image.id))
        .where(Image.project_id == project_id)
        .group_by(Image.split, Image.label, Image.defect_type)
    )
    return {(split, label, defect): n for split, label, defect, n in rows}


def get_image_by_sha(session: Session, project_id: int, sha256: str) -> Image | None:
    return session.execute(
        select(Image).where(Image.project_id == project_id, Image.sha256 == sha256)
    ).scalar_one_or_none()


# --------------------------------------------------------------------------- dataset problems


def add_problems(
    session: Session,
    project_id: int,
    problems: Iterable[Mapping[str, Any]],
    *,
    replace: bool = False,
) -> int:
    """Record validation problems (dicts with path, kind, message).

    ``replace=True`` first drops the project's earlier findings, for a re-validation.
    """
    if replace:
        session.execute(delete(DatasetProblem).where(DatasetProblem.project_id == project_id))
    rows = _rows(DatasetProblem, problems, project_id=project_id)
    if rows:
        session.execute(insert(DatasetProblem), rows)
    return len(rows)


def list_problems(session: Session, project_id: int) -> list[DatasetProblem]:
    stmt = select(DatasetProblem).where(DatasetProblem.project_id == project_id)
    return list(session.scalars(stmt.order_by(DatasetProblem.path, DatasetProblem.id)))


# --------------------------------------------------------------------------- augmentation presets


class PresetNameTaken(ValueError):
    """Another preset of the project already has that name."""


def _upsert(session: Session, model: type[M]) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(model)
    if dialect == "postgresql":
        return postgresql.insert(model)
    raise NotImplementedError(dialect)  # pragma: no cover - only SQLite and PostgreSQL


def save_preset(
    session: Session, project_id: int, name: str, config: Mapping[str, Any]
) -> AugmentationPreset:
    """Create preset ``name`` or overwrite its config (one row per project and name).

    One INSERT ... ON CONFLICT DO UPDATE: two people saving the same new name at once end
    with one row (the later config), not with a constraint error. ``for_training`` and
    ``created_at`` of an existing preset stay; ``updated_at`` moves.
    """
    now = utcnow()
    stmt = _upsert(session, AugmentationPreset).values(
        project_id=project_id, name=name, config=dict(config), created_at=now, updated_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["project_id", "name"],
        set_={"config": stmt.excluded.config, "updated_at": stmt.excluded.updated_at},
    )
    preset_id = session.execute(stmt.returning(AugmentationPreset.id)).scalar_one()
    return session.execute(
        select(AugmentationPreset).where(AugmentationPreset.id == preset_id),
        execution_options={"populate_existing": True},
    ).scalar_one()


def get_preset(session: Session, preset_id: int) -> AugmentationPreset | None:
    return session.get(AugmentationPreset, preset_id)


def get_preset_by_name(session: Session, project_id: int, name: str) -> AugmentationPreset | None:
    return session.execute(
        select(AugmentationPreset).where(
            AugmentationPreset.project_id == project_id, AugmentationPreset.name == name
        )
    ).scalar_one_or_none()


def list_presets(session: Session, project_id: int) -> list[AugmentationPreset]:
    """By name (then id, for a stable order)."""
    stmt = select(AugmentationPreset).where(AugmentationPreset.project_id == project_id)
    return list(session.scalars(stmt.order_by(AugmentationPreset.name, AugmentationPreset.id)))


def rename_preset(session: Session, project_id: int, old: str, new: str) -> AugmentationPreset:
    """Rename preset ``old``; LookupError if it does not exist, :class:`PresetNameTaken` if
    another preset already has ``new`` (the unique constraint backs this check up)."""
    preset = get_preset_by_name(session, project_id, old)
    if preset is None:
        raise LookupError(f"no augmentation preset named {old!r}")
    if new != old:
        if get_preset_by_name(session, project_id, new) is not None:
            raise PresetNameTaken(f"an augmentation preset named {new!r} already exists")
        _update_row(session, AugmentationPreset, preset.id, name=new, updated_at=utcnow())
    return preset


def delete_preset(session: Session, project_id: int, name: str) -> bool:
    return session.execute(
        delete(AugmentationPreset).where(
            AugmentationPreset.project_id == project_id, AugmentationPreset.name == name
        )
    ).rowcount > 0


def set_training_preset(session: Session, project_id: int, name: str | None) -> None:
    """Make preset ``name`` the one training uses (None: none); the others are cleared.

    The project row is locked first so concurrent markers queue; clearing is flushed before
    marking because the partial unique index allows one marked row at any moment.
    LookupError (nothing changed) if ``name`` does not exist.
    """
    _lock(session, Project, project_id)
    target = None
    if name is not None:
        target = get_preset_by_name(session, project_id, name)
        if target is None:
            raise LookupError(f"no augmentation preset named {name!r}")
    session.execute(
        update(AugmentationPreset)
        .where(AugmentationPreset.project_id == project_id, AugmentationPreset.for_training)
        .values(for_training=False)
        .execution_options(synchronize_session=False)
    )
    for obj in list(session.identity_map.values()):
        if isinstance(obj, AugmentationPreset):
            session.expire(obj, ["for_training"])
    if target is not None:
        _update_row(session, AugmentationPreset, target.id, for_training=True)


def training_preset(session: Session, project_id: int) -> AugmentationPreset | None:
    return session.execute(
        select(AugmentationPreset).where(
            AugmentationPreset.project_id == project_id, AugmentationPreset.for_training
        )
    ).scalar_one_or_none()


# --------------------------------------------------------------------------- model versions


def create_model_version(
    session: Session,
    project_id: int,
    algorithm: str,
    backbone: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """A queued training run."""
    mv = ModelVersion(
        project_id=project_id, algorithm=algorithm, backbone=backbone, params=dict(params or {})
    )
    session.add(mv)
    session.flush()
    return mv


def get_model_version(session: Session, model_version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, model_version_id)


def list_model_versions(
    session: Session, project_id: int, *, status: str | None = None
) -> list[ModelVersion]:
    """Newest first."""
    stmt = select(ModelVersion).where(ModelVersion.project_id == project_id)
    if status is not None:
        stmt = stmt.where(ModelVersion.status == status)
    return list(session.scalars(stmt.order_by(ModelVersion.id.desc())))


def _update_active_run(session: Session, model_version_id: int, **values: Any) -> bool:
    """UPDATE guarded by "still queued/running": a cancelled run is never revived."""
    active = ModelVersion.status.in_(ACTIVE_STATUSES)
    return _update_row(session, ModelVersion, model_version_id, active, **values)


def start_model_version(session: Session, model_version_id: int, stage: str | None = None) -> bool:
    """queued -> running; False if the run was cancelled (or finished) meanwhile."""
    now = utcnow()
    return _update_active_run(
        session, model_version_id, status=RunStatus.RUNNING.value, started_at=now, stage=stage,
        heartbeat_at=now,
    )


def update_progress(
    session: Session, model_version_id: int, progress: float, stage: str | None = None
) -> bool:
    """Write progress (clamped to 0..1) and optionally the stage text.

    Returns False when the run is no longer queued/running: the worker should stop, this is
    how a cancel from the UI reaches it.
    """
    values: dict[str, Any] = {"progress": min(max(float(progress), 0.0), 1.0),
                              "heartbeat_at": utcnow()}
    if stage is not None:
        values["stage"] = stage
    return _update_active_run(session, model_version_id, **values)


def finish_model_version(
    session: Session,
    model_version_id: int,
    status: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    error: str | None = None,
    fit_seconds: float | None = None,
    artifact_dir: str | None = None,
) -> bool:
    """Close a run as done/failed/cancelled; False if it had already ended (e.g. cancelled)."""
    if status in ACTIVE_STATUSES:
        raise ValueError(f"finish needs a final status, got {status!r}")
    values: dict[str, Any] = {"status": str(status), "finished_at": utcnow(), "error": error}
    if status == RunStatus.DONE:
        values["progress"] = 1.0
    if metrics is not None:
        values["metrics"] = dict(metrics)
    if fit_seconds is not None:
        values["fit_seconds"] = fit_seconds
    if artifact_dir is not None:
        values["artifact_dir"] = artifact_dir
    return _update_active_run(session, model_version_id, **values)


def cancel_model_version(session: Session, model_version_id: int) -> bool:
    """Ask a queued/running run to stop; its worker sees ``update_progress`` return False."""
    return _update_active_run(
        session, model_version_id, status=RunStatus.CANCELLED.value, finished_at=utcnow()
    )


def set_model_metrics(session: Session, model_version_id: int, metrics: Mapping[str, Any]) -> None:
    """Replace the metrics JSON of any run (e.g. an evaluation after training)."""
    _update_row(session, ModelVersion, model_version_id, metrics=dict(metrics))


# --------------------------------------------------------------------------- state versions


def add_state_version(
    session: Session,
    model_version_id: int,
    *,
    kind: str,
    state_format: str,
    directory: str | None,
    files: Mapping[str, str],
    vector_count: int | None = None,
    dim: int | None = None,
    source_images: Sequence[Any] = (),
    parent_id: int | None = None,
    note: str | None = None,
) -> StateVersion:
    """Append state version N+1 of a model version and make it the active one.

    ``files`` is the manifest ``{path relative to directory: sha256}`` of every file of the
    state. ``parent_id`` defaults to the version that was active (None for the first). The
    previous active row is deactivated, never changed otherwise.
    """
    _lock(session, ModelVersion, model_version_id)
    previous = get_active_state_version(session, model_version_id)
    next_version = session.execute(
        select(func.coalesce(func.max(StateVersion.version), 0) + 1).where(
            StateVersion.model_version_id == model_version_id
        )
    ).scalar_one()
    if previous is not None:
        previous.is_active = False
        session.flush()  # before the INSERT: the partial unique index allows one active row
    state = StateVersion(
        model_version_id=model_version_id,
        version=next_version,
        parent_id=parent_id if parent_id is not None else (previous.id if previous else None),
        kind=str(kind),
        state_format=state_format,
        directory=directory,
        files=dict(files),
        vector_count=vector_count,
        dim=dim,
        source_images=list(source_images),
        is_active=True,
        note=note,
    )
    session.add(state)
    session.flush()
    return state


def rollback_state_version(
    session: Session,
    model_version_id: int,
    to_state_version_id: int,
    *,
    note: str | None = None,
    created_by: str | None = None,
) -> StateVersion:
    """Roll back by appending a ``rollback`` version that reuses an earlier state's files.

    History stays linear and complete (v1, v2, v3=rollback to v1); the earlier state's active
    threshold is copied onto the new version so scoring can resume at once.
    """
    target = session.get(StateVersion, to_state_version_id)
    if target is None or target.model_version_id != model_version_id:
        raise LookupError(
            f"state version {to_state_version_id} is not in model {model_version_id}"
        )
    state = add_state_version(
        session,
        model_version_id,
        kind=StateKind.ROLLBACK,
        state_format=target.state_format,
        directory=target.directory,
        files=target.files,
        vector_count=target.vector_count,
        dim=target.dim,
        source_images=target.source_images,
        parent_id=target.id,
        note=note or f"rollback to v{target.version}",
    )
    old = get_active_threshold(session, target.id)
    if old is not None:
        add_threshold(
            session,
            state.id,
            method=old.method,
            raw_value=old.raw_value,
            normalized_value=old.normalized_value,
            params=old.params,
            created_by=created_by or "rollback",
        )
    return state


def get_state_version(session: Session, state_version_id: int) -> StateVersion | None:
    return session.get(StateVersion, state_version_id)


def list_state_versions(session: Session, model_version_id: int) -> list[StateVersion]:
    """Oldest first (v1, v2, ...)."""
    stmt = select(StateVersion).where(StateVersion.model_version_id == model_version_id)
    return list(session.scalars(stmt.order_by(StateVersion.version)))


def get_active_state_version(session: Session, model_version_id: int) -> StateVersion | None:
    return session.execute(
        select(StateVersion).where(
            StateVersion.model_version_id == model_version_id,
            StateVersion.is_active.is_(True),
        )
    ).scalar_one_or_none()


# --------------------------------------------------------------------------- provenance


def next_provenance_id(session: Session, model_version_id: int) -> int:
    """One past the highest record id ever issued for the model version (0 for none).

    Records are never deleted with a rollback, so an id, once issued, is never issued again.
    """
    return session.execute(
        select(func.coalesce(func.max(Provenance.record_id), -1) + 1).where(
            Provenance.model_version_id == model_version_id
        )
    ).scalar_one()


def add_provenance(
    session: Session,
    model_version_id: int,
    state_version_id: int,
    records: Iterable[Mapping[str, Any]],
) -> int:
    """Store provenance records (dicts with record_id, path, sha256, view, height, width,
    grid_height, grid_width) issued by ``state_version_id``; a reused id is an IntegrityError.
    """
    rows = _rows(Provenance, records, model_version_id=model_version_id,
                 state_version_id=state_version_id)
    if rows:
        session.execute(insert(Provenance), rows)
    return len(rows)


def get_provenance(
    session: Session, model_version_id: int, record_ids: Iterable[int]
) -> list[Provenance]:
    """The records with these ids (in id order; ids never issued are simply absent)."""
    ids = sorted({int(i) for i in record_ids})
    if not ids:
        return []
    stmt = select(Provenance).where(
        Provenance.model_version_id == model_version_id, Provenance.record_id.in_(ids)
    )
    return list(session.scalars(stmt.order_by(Provenance.record_id)))


# --------------------------------------------------------------------------- thresholds


def add_threshold(
    session: Session,
    state_version_id: int,
    *,
    method: str,
    raw_value: float,
    normalized_value: float | None = None,
    params: Mapping[str, Any] | None = None,
    created_by: str | None = None,
) -> Threshold:
    """Make a new active threshold for a state version; the old one stays, inactive."""
    _lock(session, StateVersion, state_version_id)
    previous = get_active_threshold(session, state_version_id)
    if previous is not None:
        previous.active = False
        session.flush()  # before the INSERT: the partial unique index allows one active row
    threshold = Threshold(
        state_version_id=state_version_id,
        method=method,
        raw_value=float(raw_value),
        normalized_value=None if normalized_value is None else float(normalized_value),
        params=dict(params or {}),
        active=True,
        created_by=created_by,
    )
    session.add(threshold)
    session.flush()
    return threshold


def get_threshold(session: Session, threshold_id: int) -> Threshold | None:
    return session.get(Threshold, threshold_id)


def get_active_threshold(session: Session, state_version_id: int) -> Threshold | None:
    return session.execute(
        select(Threshold).where(
            Threshold.state_version_id == state_version_id, Threshold.active.is_(True)
        )
    ).scalar_one_or_none()


def get_active_threshold_for_model(session: Session, model_version_id: int) -> Threshold | None:
    """The active threshold of the model version's active state: what scoring uses now."""
    return session.execute(
        select(Threshold)
        .join(StateVersion, Threshold.state_version_id == StateVersion.id)
        .where(
            StateVersion.model_version_id == model_version_id,
            StateVersion.is_active.is_(True),
            Threshold.active.is_(True),
        )
    ).scalar_one_or_none()


def list_thresholds(session: Session, state_version_id: int) -> list[Threshold]:
    """Oldest first: the full history of a state version's thresholds."""
    stmt = select(Threshold).where(Threshold.state_version_id == state_version_id)
    return list(session.scalars(stmt.order_by(Threshold.id)))


# --------------------------------------------------------------------------- batches


def create_batch(session: Session, project_id: int, name: str, source: str | None = None) -> Batch:
    batch = Batch(project_id=project_id, name=name, source=source)
    session.add(batch)
    session.flush()
    return batch


def get_batch(session: Session, batch_id: int) -> Batch | None:
    return session.get(Batch, batch_id)


def get_batch_by_name(session: Session, project_id: int, name: str) -> Batch | None:
    return session.execute(
        select(Batch).where(Batch.project_id == project_id, Batch.name == name)
    ).scalar_one_or_none()


def list_batches(session: Session, project_id: int) -> list[Batch]:
    """Oldest first: the time axis of the drift views."""
    stmt = select(Batch).where(Batch.project_id == project_id)
    return list(session.scalars(stmt.order_by(Batch.started_at, Batch.id)))


def finish_batch(session: Session, batch_id: int, finished_at: datetime | None = None) -> None:
    _update_row(session, Batch, batch_id, finished_at=finished_at or utcnow())


# --------------------------------------------------------------------------- predictions


def add_predictions(
    session: Session, batch_id: int, predictions: Iterable[Mapping[str, Any]]
) -> int:
    """Insert predictions (dicts of Prediction columns); an image already scored in this batch
    is skipped, so a resumed batch never duplicates. Returns how many rows were new."""
    return _insert_new(
        session,
        Prediction,
        _rows(Prediction, predictions, batch_id=batch_id),
        ("batch_id", "image_sha256"),
    )


def add_new_predictions(
    session: Session, batch_id: int, predictions: Iterable[Mapping[str, Any]]
) -> set[str]:
    """Like :func:`add_predictions`, but returns the sha256 of each row THIS call inserted.

    Two runs scoring into one batch at once both try every image; only the database knows
    which run's row went in, and each run must report its own count, not the attempts.
    """
    rows = _rows(Prediction, predictions, batch_id=batch_id)
    if not rows:
        return set()
    dialect = session.get_bind().dialect.name
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    stmt = insert(Prediction).on_conflict_do_nothing(index_elements=["batch_id", "image_sha256"])
    return set(session.scalars(stmt.returning(Prediction.image_sha256), rows))


def list_predictions(
    session: Session,
    batch_id: int,
    *,
    verdict: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[Prediction]:
    """In insertion order."""
    stmt = select(Prediction).where(Prediction.batch_id == batch_id)
    if verdict is not None:
        stmt = stmt.where(Prediction.verdict == verdict)
    return list(session.scalars(_page(stmt.order_by(Prediction.id), offset, limit)))


def scored_shas(session: Session, batch_id: int) -> set[str]:
    """Images already scored in a batch: what a resumed scoring run skips."""
    stmt = select(Prediction.image_sha256).where(Prediction.batch_id == batch_id)
    return set(session.scalars(stmt))


def batch_scores(session: Session, batch_id: int, *, normalized: bool = False) -> list[float]:
    """Scores of a batch in insertion order, without loading whole rows (drift, charts)."""
    column = Prediction.normalized_score if normalized else Prediction.raw_score
    stmt = select(column).where(Prediction.batch_id == batch_id, column.is_not(None))
    return list(session.scalars(stmt.order_by(Prediction.id)))


def review_prediction(
    session: Session, prediction_id: int, verdict: str | None, by: str | None = None
) -> bool:
    """A person's verdict ("good"/"defect", None clears it), stamped with the time and who."""
    reviewed_at = None if verdict is None else utcnow()
    return _update_row(
        session, Prediction, prediction_id, reviewed_verdict=verdict, reviewed_at=reviewed_at,
        reviewed_by=None if verdict is None else by,
    )


# --------------------------------------------------------------------------- drift reports


def add_drift_reports(
    session: Session, batch_id: int, reports: Iterable[Mapping[str, Any]]
) -> list[DriftReport]:
    """Record drift statistics (dicts with statistic, value, p_value, alert, details)."""
    rows = [DriftReport(**{**r, "batch_id": batch_id}) for r in reports]
    session.add_all(rows)
    session.flush()
    return rows


def delete_drift_reports(session: Session, report_ids: Iterable[int]) -> int:
    """Delete drift report rows by id: a re-run report replaces its own earlier rows (same lot,
    same reference), in the caller's transaction, so readers never see a lot half-reported."""
    ids = [int(i) for i in report_ids]
    if not ids:
        return 0
    return session.execute(delete(DriftReport).where(DriftReport.id.in_(ids))).rowcount


def list_drift_reports(
    session: Session, *, batch_id: int | None = None, project_id: int | None = None
) -> list[DriftReport]:
    """Reports of one batch or of all a project's batches, oldest first."""
    stmt = select(DriftReport)
    if batch_id is not None:
        stmt = stmt.where(DriftReport.batch_id == batch_id)
    if project_id is not None:
        stmt = stmt.join(Batch, DriftReport.batch_id == Batch.id).where(
            Batch.project_id == project_id
        )
    return list(session.scalars(stmt.order_by(DriftReport.id)))


# --------------------------------------------------------------------------- history counts


@dataclass(frozen=True)
class BatchSummary:
    """One row of the history view: a batch with its prediction and alert counts."""

    batch_id: int
    name: str
    source: str | None
    started_at: datetime
    finished_at: datetime | None
    predictions: int
    good: int
    defect: int
    review: int
    reviewed: int
    mean_score: float | None
    max_score: float | None
    alerts: int


def batch_summaries(session: Session, project_id: int) -> list[BatchSummary]:
    """Per-batch counts in two grouped queries (not one query per batch), oldest first."""

    def n_verdict(v: Verdict) -> Any:
        return func.coalesce(func.sum(case((Prediction.verdict == v.value, 1), else_=0)), 0)

    pred = (
        select(
            Prediction.batch_id,
            func.count(Prediction.id),
            n_verdict(Verdict.GOOD),
            n_verdict(Verdict.DEFECT),
            n_verdict(Verdict.REVIEW),
            func.count(Prediction.reviewed_verdict),
            func.avg(Prediction.raw_score),
            func.max(Prediction.raw_score),
        )
        .join(Batch, Prediction.batch_id == Batch.id)
        .where(Batch.project_id == project_id)
        .group_by(Prediction.batch_id)
    )
    stats = {row[0]: row[1:] for row in session.execute(pred)}
    alert_rows = session.execute(
        select(DriftReport.batch_id, func.count(DriftReport.id))
        .join(Batch, DriftReport.batch_id == Batch.id)
        .where(Batch.project_id == project_id, DriftReport.alert.is_(True))
        .group_by(DriftReport.batch_id)
    )
    alerts = {batch_id: n for batch_id, n in alert_rows}
    out = []
    for b in list_batches(session, project_id):
        n, good, defect, review, reviewed, mean, peak = stats.get(b.id, (0, 0, 0, 0, 0, None, None))
        out.append(
            BatchSummary(
                b.id, b.name, b.source, b.started_at, b.finished_at,
                int(n), int(good), int(defect), int(review), int(reviewed),
                None if mean is None else float(mean), None if peak is None else float(peak),
                int(alerts.get(b.id, 0)),
            )
        )  # fmt: skip
    return out


def project_counts(session: Session, project_id: int) -> dict[str, int]:
    """Headline numbers for the home dashboard, one scalar subquery each, one round trip."""
    mv_ids = select(ModelVersion.id).where(ModelVersion.project_id == project_id)
    batch_ids = select(Batch.id).where(Batch.project_id == project_id)

    def count(model: type[Base], *where: Any) -> Any:
        return select(func.count()).select_from(model).where(*where).scalar_subquery()

    row = session.execute(
        select(
            count(Image, Image.project_id == project_id).label("images"),
            count(DatasetProblem, DatasetProblem.project_id == project_id).label("problems"),
            count(ModelVersion, ModelVersion.project_id == project_id).label("model_versions"),
            count(StateVersion, StateVersion.model_version_id.in_(mv_ids)).label(
                "state_versions"
            ),
            count(Batch, Batch.project_id == project_id).label("batches"),
            count(Prediction, Prediction.batch_id.in_(batch_ids)).label("predictions"),
            count(
                DriftReport, DriftReport.batch_id.in_(batch_ids), DriftReport.alert.is_(True)
            ).label("drift_alerts"),
        )
    ).one()
    return {key: int(value) for key, value in row._mapping.items()}

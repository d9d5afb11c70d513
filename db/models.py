"""ORM models: the schema the migrations build, declared once in SQLAlchemy 2.0 typed style.

The tables are created ONLY by Alembic (`db.migrate.upgrade`); `tests/db/test_migrations.py`
checks that these classes and `alembic upgrade head` agree. Enumerations are short strings
guarded by CHECK constraints so the same schema works on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: batch-mode migrations on SQLite can only drop/alter
# constraints that have names, and PostgreSQL needs the same names to mirror them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Label(StrEnum):
    GOOD = "good"
    DEFECT = "defect"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)  # a worker may still write


class StateKind(StrEnum):
    """How a state version came to be."""

    INITIAL = "initial"
    INCREMENTAL = "incremental"
    ONLINE = "online"
    ROLLBACK = "rollback"


class Verdict(StrEnum):
    GOOD = "good"
    DEFECT = "defect"
    REVIEW = "review"  # inside the review band: between the sure-good and sure-bad thresholds


def utcnow() -> datetime:
    """Aware UTC now; the single clock of every default timestamp."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps that always come back timezone-aware in UTC.

    SQLite has no timezone type and returns naive values; PostgreSQL returns them in the
    session's time zone. Normalizing here keeps comparisons and sorting honest everywhere.
    Naive datetimes are refused on the way in, since their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime (db.models.utcnow)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def one_of(column: str, values: type[StrEnum], name: str | None = None) -> CheckConstraint:
    """CHECK constraint that keeps a string column inside an enumeration."""
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=name or column)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


def _now_column() -> Mapped[datetime]:
    # Python default for ORM rows, server default for raw SQL inserts (migrations, scripts).
    return mapped_column(default=utcnow, server_default=func.current_timestamp())


def _fk(target: str, *, nullable: bool = False, ondelete: str | None = "CASCADE") -> Any:
    return mapped_column(ForeignKey(target, ondelete=ondelete), nullable=nullable)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    data_root: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = _now_column()
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256"),
        one_of("split", Split),
        one_of("label", Label),
        Index(None, "project_id", "label"),  # added in 0002: gallery filters and label counts
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = _fk("projects.id")
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(8))
    defect_type: Mapped[str | None] = mapped_column(String(100))
    mask_path: Mapped[str | None] = mapped_column(String(1024))
    width: Mapped[int | None]
    height: Mapped[int | None]
    created_at: Mapped[datetime] = _now_column()


class DatasetProblem(Base):
    """A validation finding (unreadable file, wrong mask size, ...), kept for the report."""

    __tablename__ = "dataset_problems"

    __table_args__ = (Index(None, "project_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = _fk("projects.id")
    path: Mapped[str] = mapped_column(String(1024))
    kind: Mapped[str] = mapped_column(String(50))
    message: Mapped[str] = mapped_column(Text, default="")


class AugmentationPreset(Base):
    """A named augmentation recipe of a project; saving a name again overwrites it (0007).

    ``config`` holds ``engine.augment.serialize`` output (Kensa's own JSON plus the
    albumentations dict). At most one preset per project is ``for_training`` (partial unique
    index), so "the augmentation training uses" is one row or none, never a guess.
    """

    __tablename__ = "augmentation_presets"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index(
            "ux_augmentation_presets_one_for_training",
            "project_id",
            unique=True,
            sqlite_where=text("for_training"),
            postgresql_where=text("for_training"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = _fk("projects.id")
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # server default: rows written before 0007 (and raw SQL inserts) are not for training
    for_training: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()  # set by save and rename, not by marking


class ModelVersion(Base):
    """One training run; a worker writes status/stage/progress here while it runs."""

    __tablename__ = "model_versions"
    __table_args__ = (
        one_of("status", RunStatus),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index(None, "project_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = _fk("projects.id")
    algorithm: Mapped[str] = mapped_column(String(50))
    backbone: Mapped[str | None] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    fit_seconds: Mapped[float | None]
    artifact_dir: Mapped[str | None] = mapped_column(String(1024))
    # added in 0003: the worker's last sign of life, so a crashed worker is told apart from
    # a slow one (status alone stays "running" after a SIGKILL or an out-of-memory kill)
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _now_column()


class StateVersion(Base):
    """A fitted state of a model version: v1, v2 (parent v1), ... never overwritten.

    The state of any model (a memory bank, PaDiM statistics, trained weights) is a folder of
    files: ``directory`` (relative to ``KENSA_HOME`` like every stored path) and ``files``
    ``{path relative to directory: sha256}``, all verified before a load. ``state_format``
    is the registry name of the model that wrote it; ``vector_count`` / ``dim`` only mean
    something for memory-bank models. At most one row per model version is active (partial
    unique index), so "the state in use" is a fact the database enforces.
    """

    __tablename__ = "state_versions"
    __table_args__ = (
        UniqueConstraint("model_version_id", "version"),
        one_of("kind", StateKind),
        CheckConstraint("version >= 1", name="version"),
        Index(
            "ux_state_versions_one_active",
            "model_version_id",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = _fk("model_versions.id")
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = _fk("state_versions.id", nullable=True, ondelete="SET NULL")
    kind: Mapped[str] = mapped_column(String(16))
    state_format: Mapped[str] = mapped_column(String(50))
    directory: Mapped[str | None] = mapped_column(String(1024))
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    vector_count: Mapped[int | None]
    dim: Mapped[int | None]
    source_images: Mapped[list[Any]] = mapped_column(default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now_column()
    note: Mapped[str | None] = mapped_column(Text)


class Provenance(Base):
    """Where bank vectors came from: record ``record_id`` of a model version is one (training
    image, view). Ids are issued by the database per model version (max + 1), so they are
    never reused across updates and rollbacks; ``state_version_id`` is the version that
    issued the record (records of a rolled-back update stay, their ids stay spent)."""

    __tablename__ = "provenance_records"
    __table_args__ = (
        UniqueConstraint("model_version_id", "record_id"),
        Index(None, "state_version_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = _fk("model_versions.id")
    state_version_id: Mapped[int] = _fk("state_versions.id")
    record_id: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    view: Mapped[str] = mapped_column(String(16))
    height: Mapped[int]
    width: Mapped[int]
    grid_height: Mapped[int]
    grid_width: Mapped[int]


class Threshold(Base):
    """Decision threshold of a state version. Setting one adds a row and deactivates the old."""

    __tablename__ = "thresholds"
    __table_args__ = (
        Index(None, "state_version_id"),
        Index(
            "ux_thresholds_one_active",
            "state_version_id",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    state_version_id: Mapped[int] = _fk("state_versions.id")
    method: Mapped[str] = mapped_column(String(50))
    raw_value: Mapped[float]
    normalized_value: Mapped[float | None]
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = _now_column()


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = _fk("projects.id")
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(1024))
    started_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None]


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("batch_id", "image_sha256"),
        one_of("verdict", Verdict),
        CheckConstraint(
            "reviewed_verdict IS NULL OR reviewed_verdict IN ('good', 'defect')",
            name="reviewed_verdict",
        ),
        Index(None, "state_version_id"),  # added in 0002: "what did state vN decide?"
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = _fk("batches.id")
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_path: Mapped[str] = mapped_column(String(1024))
    # History: a state version or threshold that has predictions cannot be deleted.
    state_version_id: Mapped[int] = _fk("state_versions.id", ondelete=None)
    threshold_id: Mapped[int | None] = _fk("thresholds.id", nullable=True, ondelete=None)
    raw_score: Mapped[float]
    normalized_score: Mapped[float | None]
    verdict: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float | None]
    regions: Mapped[list[Any]] = mapped_column(default=list)
    heatmap_path: Mapped[str | None] = mapped_column(String(1024))
    reviewed_verdict: Mapped[str | None] = mapped_column(String(8))
    reviewed_at: Mapped[datetime | None]  # added in 0002: when a person corrected the verdict
    # added in 0006: who reviewed it (a name typed on the Lots page, or the logged-in user)
    reviewed_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = _now_column()


class DriftReport(Base):
    __tablename__ = "drift_reports"
    __table_args__ = (Index(None, "batch_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = _fk("batches.id")
    statistic: Mapped[str] = mapped_column(String(50))
    value: Mapped[float]
    p_value: Mapped[float | None]
    alert: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _now_column()


# --------------------------------------------------------------------------- jobs (0005)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class Job(Base):
    """One long piece of work (train, import, score a batch, update a bank, ...).

    The row, not the queue, is the truth: the queue (huey) only carries "run job ID" messages,
    which may be delivered twice or lost with a dead worker. A worker owns a job only after
    its conditional ``queued -> running`` UPDATE succeeded (``db.jobs.claim_job``), writes
    ``heartbeat_at`` every few seconds while it works, and every later write is guarded by
    its ``worker`` token, so a worker that was presumed dead can never overwrite a retry.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        one_of("status", JobStatus),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index(None, "status"),
        Index(None, "project_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # SET NULL: a job's record outlives the project it worked on (operators read failures)
    project_id: Mapped[int | None] = _fk("projects.id", nullable=True, ondelete="SET NULL")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(default=0.0)
    heartbeat_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=2)
    worker: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

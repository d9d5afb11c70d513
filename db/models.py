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


class BankKind(StrEnum):
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
    __tablename__ = "augmentation_presets"
    __table_args__ = (Index(None, "project_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = _fk("projects.id")
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _now_column()


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


class MemoryBankVersion(Base):
    """A fitted state of a model version: v1, v2 (parent v1), ... never overwritten.

    At most one row per model version is active (partial unique index), so "the bank in use"
    is a fact the database enforces, not a convention.
    """

    __tablename__ = "memory_bank_versions"
    __table_args__ = (
        UniqueConstraint("model_version_id", "version"),
        one_of("kind", BankKind),
        CheckConstraint("version >= 1", name="version"),
        Index(
            "ux_memory_bank_versions_one_active",
            "model_version_id",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = _fk("model_versions.id")
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = _fk(
        "memory_bank_versions.id", nullable=True, ondelete="SET NULL"
    )
    kind: Mapped[str] = mapped_column(String(16))
    vector_count: Mapped[int] = mapped_column(default=0)
    dim: Mapped[int] = mapped_column(default=0)
    source_images: Mapped[list[Any]] = mapped_column(default=list)
    file_path: Mapped[str | None] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64))
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now_column()
    note: Mapped[str | None] = mapped_column(Text)


class Threshold(Base):
    """Decision threshold of a bank version. Setting one adds a row and deactivates the old."""

    __tablename__ = "thresholds"
    __table_args__ = (
        Index(None, "bank_version_id"),
        Index(
            "ux_thresholds_one_active",
            "bank_version_id",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    bank_version_id: Mapped[int] = _fk("memory_bank_versions.id")
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
        Index(None, "bank_version_id"),  # added in 0002: "what did bank vN decide?"
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = _fk("batches.id")
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_path: Mapped[str] = mapped_column(String(1024))
    # History: a bank version or threshold that has predictions cannot be deleted.
    bank_version_id: Mapped[int] = _fk("memory_bank_versions.id", ondelete=None)
    threshold_id: Mapped[int | None] = _fk("thresholds.id", nullable=True, ondelete=None)
    raw_score: Mapped[float]
    normalized_score: Mapped[float | None]
    verdict: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float | None]
    regions: Mapped[list[Any]] = mapped_column(default=list)
    heatmap_path: Mapped[str | None] = mapped_column(String(1024))
    reviewed_verdict: Mapped[str | None] = mapped_column(String(8))
    reviewed_at: Mapped[datetime | None]  # added in 0002: when a person corrected the verdict
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

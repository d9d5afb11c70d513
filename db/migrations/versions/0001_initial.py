"""initial schema: projects, datasets, models, memory banks, thresholds, batches, drift

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25

Migrations are frozen history: use plain sqlalchemy types here, never import db.models.
Timestamps are TIMESTAMP WITH TIME ZONE (db.models.UTCDateTime normalizes them to UTC);
enumerations are short strings with CHECK constraints; names follow the naming convention
of db.models so later batch migrations can address every constraint.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), nullable=False)


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _created_at(name: str = "created_at") -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        server_default=sa.func.current_timestamp(),
        nullable=False,
    )


def _fk(
    table: str, column: str, referred: str, ondelete: str | None = "CASCADE"
) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{referred}.id"], name=op.f(f"fk_{table}_{column}_{referred}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "projects",
        _id(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("data_root", sa.String(1024), nullable=False),
        _created_at(),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "images",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.Column("defect_type", sa.String(100), nullable=True),
        sa.Column("mask_path", sa.String(1024), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        _created_at(),
        sa.CheckConstraint("split IN ('train', 'val', 'test')", name=op.f("ck_images_split")),
        sa.CheckConstraint("label IN ('good', 'defect')", name=op.f("ck_images_label")),
        _fk("images", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("project_id", "sha256", name=op.f("uq_images_project_id_sha256")),
    )
    op.create_table(
        "dataset_problems",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _fk("dataset_problems", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_problems")),
    )
    op.create_index(
        op.f("ix_dataset_problems_project_id"), "dataset_problems", ["project_id"]
    )
    op.create_table(
        "augmentation_presets",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        _created_at(),
        _fk("augmentation_presets", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_augmentation_presets")),
    )
    op.create_index(
        op.f("ix_augmentation_presets_project_id"), "augmentation_presets", ["project_id"]
    )
    op.create_table(
        "model_versions",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(50), nullable=False),
        sa.Column("backbone", sa.String(100), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.Text(), nullable=True),
        sa.Column("progress", sa.Double(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("fit_seconds", sa.Double(), nullable=True),
        sa.Column("artifact_dir", sa.String(1024), nullable=True),
        _created_at(),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')",
            name=op.f("ck_model_versions_status"),
        ),
        sa.CheckConstraint(
            "progress >= 0 AND progress <= 1", name=op.f("ck_model_versions_progress")
        ),
        _fk("model_versions", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
    )
    op.create_index(op.f("ix_model_versions_project_id"), "model_versions", ["project_id"])
    op.create_table(
        "memory_bank_versions",
        _id(),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("vector_count", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("source_images", sa.JSON(), nullable=False),
        sa.Column("file_path", sa.String(1024), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        _created_at(),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('initial', 'incremental', 'online', 'rollback')",
            name=op.f("ck_memory_bank_versions_kind"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_memory_bank_versions_version")),
        _fk("memory_bank_versions", "model_version_id", "model_versions"),
        _fk("memory_bank_versions", "parent_id", "memory_bank_versions", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memory_bank_versions")),
        sa.UniqueConstraint(
            "model_version_id",
            "version",
            name=op.f("uq_memory_bank_versions_model_version_id_version"),
        ),
    )
    # At most one active bank per model version, enforced by the database.
    op.create_index(
        "ux_memory_bank_versions_one_active",
        "memory_bank_versions",
        ["model_version_id"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )
    op.create_table(
        "thresholds",
        _id(),
        sa.Column("bank_version_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(50), nullable=False),
        sa.Column("raw_value", sa.Double(), nullable=False),
        sa.Column("normalized_value", sa.Double(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=True),
        _created_at(),
        _fk("thresholds", "bank_version_id", "memory_bank_versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thresholds")),
    )
    op.create_index(op.f("ix_thresholds_bank_version_id"), "thresholds", ["bank_version_id"])
    op.create_index(
        "ux_thresholds_one_active",
        "thresholds",
        ["bank_version_id"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "batches",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source", sa.String(1024), nullable=True),
        _created_at("started_at"),
        _ts("finished_at"),
        _fk("batches", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_batches_project_id_name")),
    )
    op.create_table(
        "predictions",
        _id(),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_path", sa.String(1024), nullable=False),
        sa.Column("bank_version_id", sa.Integer(), nullable=False),
        sa.Column("threshold_id", sa.Integer(), nullable=True),
        sa.Column("raw_score", sa.Double(), nullable=False),
        sa.Column("normalized_score", sa.Double(), nullable=True),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("heatmap_path", sa.String(1024), nullable=True),
        sa.Column("reviewed_verdict", sa.String(8), nullable=True),
        _created_at(),
        sa.CheckConstraint(
            "verdict IN ('good', 'defect', 'review')", name=op.f("ck_predictions_verdict")
        ),
        sa.CheckConstraint(
            "reviewed_verdict IS NULL OR reviewed_verdict IN ('good', 'defect')",
            name=op.f("ck_predictions_reviewed_verdict"),
        ),
        _fk("predictions", "batch_id", "batches"),
        # History: banks and thresholds that made predictions cannot be deleted.
        _fk("predictions", "bank_version_id", "memory_bank_versions", ondelete=None),
        _fk("predictions", "threshold_id", "thresholds", ondelete=None),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "batch_id", "image_sha256", name=op.f("uq_predictions_batch_id_image_sha256")
        ),
    )
    op.create_table(
        "drift_reports",
        _id(),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("statistic", sa.String(50), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("p_value", sa.Double(), nullable=True),
        sa.Column("alert", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        _created_at(),
        _fk("drift_reports", "batch_id", "batches"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_reports")),
    )
    op.create_index(op.f("ix_drift_reports_batch_id"), "drift_reports", ["batch_id"])


def downgrade() -> None:
    for table in (
        "drift_reports",
        "predictions",
        "batches",
        "thresholds",
        "memory_bank_versions",
        "model_versions",
        "augmentation_presets",
        "dataset_problems",
        "images",
        "projects",
    ):
        op.drop_table(table)  # drops its indexes with it

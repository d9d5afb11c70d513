"""state versions of any model, with a file manifest, and provenance records

Revision ID: 0004_model_states
Revises: 0003_run_heartbeat
Create Date: 2026-11-26

* memory_bank_versions -> state_versions: a fitted state of ANY model (bank, statistics,
  weights). New columns ``state_format`` (registry name of the model that wrote it),
  ``directory`` and ``files`` ({path relative to directory: sha256}, every file of the state);
  ``vector_count`` / ``dim`` become nullable (only bank models have them); ``file_path`` and
  ``sha256`` fold into the manifest. thresholds / predictions ``bank_version_id`` ->
  ``state_version_id``, indexes and foreign keys renamed to match.
* provenance_records: one row per (training image, view) whose id a bank vector may carry;
  ids are unique per model version, so never reused across updates and rollbacks.

Existing rows keep their ids: ``state_format`` is the model version's algorithm (the old
``patchcore`` name of the first drafts reads as ``kensa_patchcore``), ``directory`` the model
version's artifact folder, ``files`` the bank file relative to it. ``model.json`` is not in
those manifests: a migration cannot read artifact files (it does not know ``KENSA_HOME``), so
states saved before 0004 verify their bank only, as they always did.
"""

import json
import posixpath
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004_model_states"
down_revision: str | Sequence[str] | None = "0003_run_heartbeat"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "kind IN ('initial', 'incremental', 'online', 'rollback')"
KNOWN_FORMATS = ("kensa_patchcore", "anomalib_patchcore")


def _fk(table: str, column: str, referred: str, ondelete: str | None = "CASCADE"
        ) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{referred}.id"], name=op.f(f"fk_{table}_{column}_{referred}"), ondelete=ondelete
    )


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True),
                     server_default=sa.func.current_timestamp(), nullable=False)


def _version_table(name: str, new: bool) -> None:
    """state_versions (new layout) or memory_bank_versions (0001 layout, for downgrade)."""
    if new:
        payload = [
            sa.Column("state_format", sa.String(50), nullable=False),
            sa.Column("directory", sa.String(1024), nullable=True),
            sa.Column("files", sa.JSON(), nullable=False),
            sa.Column("vector_count", sa.Integer(), nullable=True),
            sa.Column("dim", sa.Integer(), nullable=True),
            sa.Column("source_images", sa.JSON(), nullable=False),
        ]
    else:
        payload = [
            sa.Column("vector_count", sa.Integer(), nullable=False),
            sa.Column("dim", sa.Integer(), nullable=False),
            sa.Column("source_images", sa.JSON(), nullable=False),
            sa.Column("file_path", sa.String(1024), nullable=True),
            sa.Column("sha256", sa.String(64), nullable=True),
        ]
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        *payload,
        sa.Column("is_active", sa.Boolean(), nullable=False),
        _created_at(),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(KINDS, name=op.f(f"ck_{name}_kind")),
        sa.CheckConstraint("version >= 1", name=op.f(f"ck_{name}_version")),
        _fk(name, "model_version_id", "model_versions"),
        _fk(name, "parent_id", name, ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sa.UniqueConstraint("model_version_id", "version",
                            name=op.f(f"uq_{name}_model_version_id_version")),
    )
    op.create_index(f"ux_{name}_one_active", name, ["model_version_id"], unique=True,
                    sqlite_where=sa.text("is_active"), postgresql_where=sa.text("is_active"))


def _state_format(algorithm: str | None) -> str:
    return algorithm if algorithm in KNOWN_FORMATS else "kensa_patchcore"


def _manifest(file_path: str | None, sha256: str | None, artifact_dir: str | None
              ) -> tuple[str | None, dict[str, str]]:
    """(directory, files) of a pre-0004 bank row: the bank relative to the model folder."""
    if not file_path:
        return artifact_dir, {}
    if artifact_dir and file_path.startswith(artifact_dir.rstrip("/") + "/"):
        return artifact_dir, {posixpath.relpath(file_path, artifact_dir): sha256 or ""}
    directory, name = posixpath.split(file_path)
    return directory or None, {name: sha256 or ""}


def _json(value: Any) -> Any:
    """JSON columns read through plain SQL come back as text on SQLite."""
    return json.loads(value) if isinstance(value, str) else value


def _copy(source: str, target: str, convert: Any) -> None:
    """Rows of ``source`` into ``target`` (same ids, oldest first so parents come first)."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        f"SELECT v.*, m.algorithm AS _algorithm, m.artifact_dir AS _artifact_dir "
        f"FROM {source} v JOIN model_versions m ON m.id = v.model_version_id ORDER BY v.id"
    )).mappings().all()
    if not rows:
        return
    table = sa.table(target, *(sa.column(c, sa.JSON()) if c in ("files", "source_images")
                               else sa.column(c) for c in convert(rows[0])))
    conn.execute(sa.insert(table), [convert(r) for r in rows])
    if conn.dialect.name == "postgresql":  # explicit ids: move the sequence past them
        conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{target}', 'id'), "
            f"(SELECT MAX(id) FROM {target}))"
        )


def _common(r: Any) -> dict[str, Any]:
    return {
        "id": r["id"], "model_version_id": r["model_version_id"], "version": r["version"],
        "parent_id": r["parent_id"], "kind": r["kind"], "is_active": bool(r["is_active"]),
        "created_at": r["created_at"], "note": r["note"],
    }


def _to_state(r: Any) -> dict[str, Any]:
    directory, files = _manifest(r["file_path"], r["sha256"], r["_artifact_dir"])
    return {
        **_common(r), "state_format": _state_format(r["_algorithm"]), "directory": directory,
        "files": files, "vector_count": r["vector_count"], "dim": r["dim"],
        "source_images": _json(r["source_images"]),
    }


def _to_bank(r: Any) -> dict[str, Any]:
    files = _json(r["files"]) or {}
    banks = [n for n in files if n.endswith(".safetensors")] or list(files)
    name = banks[0] if banks else None
    directory = r["directory"]
    path = None if name is None else (posixpath.join(directory, name) if directory else name)
    return {
        **_common(r), "vector_count": r["vector_count"] or 0, "dim": r["dim"] or 0,
        "source_images": _json(r["source_images"]), "file_path": path,
        "sha256": None if name is None else files[name],
    }


def _repoint(table: str, old_parent: str, new_parent: str, old_col: str, new_col: str,
             ondelete: str | None, partial_unique: str | None) -> None:
    """Rename ``table.old_col`` to ``new_col`` and point its foreign key at ``new_parent``."""
    if partial_unique:  # recreated explicitly: batch mode need not reflect its WHERE clause
        op.drop_index(partial_unique, table_name=table)
    with op.batch_alter_table(table) as batch_op:
        batch_op.drop_constraint(op.f(f"fk_{table}_{old_col}_{old_parent}"), type_="foreignkey")
        batch_op.drop_index(op.f(f"ix_{table}_{old_col}"))
        batch_op.alter_column(old_col, new_column_name=new_col, existing_type=sa.Integer(),
                              existing_nullable=False)
    with op.batch_alter_table(table) as batch_op:
        batch_op.create_foreign_key(op.f(f"fk_{table}_{new_col}_{new_parent}"), new_parent,
                                    [new_col], ["id"], ondelete=ondelete)
        batch_op.create_index(op.f(f"ix_{table}_{new_col}"), [new_col])
    if partial_unique:
        op.create_index(partial_unique, table, [new_col], unique=True,
                        sqlite_where=sa.text("active"), postgresql_where=sa.text("active"))


def upgrade() -> None:
    _version_table("state_versions", new=True)
    _copy("memory_bank_versions", "state_versions", _to_state)
    _repoint("thresholds", "memory_bank_versions", "state_versions", "bank_version_id",
             "state_version_id", "CASCADE", "ux_thresholds_one_active")
    _repoint("predictions", "memory_bank_versions", "state_versions", "bank_version_id",
             "state_version_id", None, None)
    op.drop_index("ux_memory_bank_versions_one_active", table_name="memory_bank_versions")
    op.drop_table("memory_bank_versions")
    op.create_table(
        "provenance_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("state_version_id", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("view", sa.String(16), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("grid_height", sa.Integer(), nullable=False),
        sa.Column("grid_width", sa.Integer(), nullable=False),
        _fk("provenance_records", "model_version_id", "model_versions"),
        _fk("provenance_records", "state_version_id", "state_versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provenance_records")),
        sa.UniqueConstraint("model_version_id", "record_id",
                            name=op.f("uq_provenance_records_model_version_id_record_id")),
    )
    op.create_index(op.f("ix_provenance_records_state_version_id"), "provenance_records",
                    ["state_version_id"])


def downgrade() -> None:
    """Back to bank versions: the manifest's bank file becomes ``file_path`` again; provenance
    records are dropped (0003 had nowhere to keep them)."""
    op.drop_index(op.f("ix_provenance_records_state_version_id"),
                  table_name="provenance_records")
    op.drop_table("provenance_records")
    _version_table("memory_bank_versions", new=False)
    _copy("state_versions", "memory_bank_versions", _to_bank)
    _repoint("thresholds", "state_versions", "memory_bank_versions", "state_version_id",
             "bank_version_id", "CASCADE", "ux_thresholds_one_active")
    _repoint("predictions", "state_versions", "memory_bank_versions", "state_version_id",
             "bank_version_id", None, None)
    op.drop_index("ux_state_versions_one_active", table_name="state_versions")
    op.drop_table("state_versions")

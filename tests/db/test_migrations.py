"""Alembic migrations: the schema, its upgrade path with data in it, and the models agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

import db.repositories as repo
from db.migrate import (
    ALEMBIC_INI,
    current_revision,
    downgrade,
    head_revision,
    migration_engine,
    upgrade,
)
from db.models import Base
from db.session import make_engine, session_scope

ROOT = Path(__file__).resolve().parents[2]
TABLES = {t.name for t in Base.metadata.sorted_tables}
#: The tables of 0001-0003 and what 0004 renamed.
OLD_TABLES = ["projects", "images", "dataset_problems", "augmentation_presets", "model_versions",
              "memory_bank_versions", "thresholds", "batches", "predictions", "drift_reports"]
RENAMED = {"memory_bank_versions": "state_versions"}


def _counts(conn, tables: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in tables}


def test_upgrade_reaches_head_and_is_idempotent(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    upgrade(db_url)  # the app calls it on every start
    assert current_revision(db_url) == head_revision()
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    engine.dispose()


def test_models_match_migrations(db_url: str) -> None:
    """`alembic revision --autogenerate` would find nothing: models and migrations agree."""
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def _insert_0001_rows(conn) -> None:  # type: ignore[no-untyped-def]
    """Rows as a 0001 database would hold them, written with plain SQL (no ORM)."""
    sql = [
        "INSERT INTO projects (id, name, data_root, settings) VALUES (1, 'p', '/d', '{\"a\": 1}')",
        "INSERT INTO images (id, project_id, path, sha256, split, label, defect_type)"
        " VALUES (1, 1, 'a.png', 'aa', 'train', 'good', NULL),"
        " (2, 1, 'b.png', 'bb', 'test', 'defect', 'crack')",
        "INSERT INTO model_versions (id, project_id, algorithm, params, metrics, status, progress)"
        " VALUES (1, 1, 'patchcore', '{}', '{\"auroc\": 0.9}', 'done', 1.0)",
        "INSERT INTO memory_bank_versions (id, model_version_id, version, parent_id, kind,"
        " vector_count, dim, source_images, is_active)"
        " VALUES (1, 1, 1, NULL, 'initial', 10, 4, '[\"aa\"]', :f),"
        " (2, 1, 2, 1, 'incremental', 12, 4, '[]', :t)",
        "INSERT INTO thresholds (id, bank_version_id, method, raw_value, params, active)"
        " VALUES (1, 2, 'f1', 2.5, '{}', :f), (2, 2, 'manual', 3.0, '{}', :t)",
        "INSERT INTO batches (id, project_id, name) VALUES (1, 1, 'b1')",
        "INSERT INTO predictions (id, batch_id, image_sha256, image_path, bank_version_id,"
        " threshold_id, raw_score, verdict, regions, reviewed_verdict)"
        " VALUES (1, 1, 'cc', 'c.png', 2, 2, 3.5, 'defect', '[{\"area\": 5}]', 'good'),"
        " (2, 1, 'dd', 'd.png', 2, 2, 1.0, 'good', '[]', NULL)",
        "INSERT INTO drift_reports (id, batch_id, statistic, value, alert, details)"
        " VALUES (1, 1, 'ks', 0.4, :t, '{}')",
        "INSERT INTO dataset_problems (id, project_id, path, kind, message)"
        " VALUES (1, 1, 'x.png', 'unreadable', 'truncated')",
        "INSERT INTO augmentation_presets (id, project_id, name, config)"
        " VALUES (1, 1, 'light', '{\"b\": 0.2}')",
    ]
    for statement in sql:
        params = {k: v for k, v in {"t": True, "f": False}.items() if f":{k}" in statement}
        conn.execute(text(statement), params)


def test_upgrade_from_0001_keeps_every_row(db_url: str) -> None:
    upgrade(db_url, "0001_initial")
    engine = make_engine(db_url)
    assert "reviewed_at" not in {c["name"] for c in inspect(engine).get_columns("predictions")}
    with engine.begin() as conn:
        _insert_0001_rows(conn)
        before = {t: n for t, n in _counts(conn, OLD_TABLES).items()}
    engine.dispose()

    upgrade(db_url)

    engine = make_engine(db_url)
    insp = inspect(engine)
    assert current_revision(db_url) == head_revision()
    assert "reviewed_at" in {c["name"] for c in insp.get_columns("predictions")}
    assert "heartbeat_at" in {c["name"] for c in insp.get_columns("model_versions")}
    assert "ix_predictions_state_version_id" in {i["name"] for i in insp.get_indexes("predictions")}
    assert "ix_images_project_id_label" in {i["name"] for i in insp.get_indexes("images")}
    with engine.begin() as conn:
        after = _counts(conn, [RENAMED.get(t, t) for t in OLD_TABLES])
    assert list(after.values()) == list(before.values()) and all(after.values())
    with session_scope(engine) as s:  # the old rows read through today's code
        (pred, _) = repo.list_predictions(s, 1)
        assert (pred.raw_score, pred.regions, pred.reviewed_verdict) == (3.5, [{"area": 5}], "good")
        assert pred.reviewed_at is None and pred.created_at.tzinfo is not None
        assert repo.get_active_state_version(s, 1).parent_id == 1  # type: ignore[union-attr]
        assert repo.get_active_threshold(s, 2).method == "manual"  # type: ignore[union-attr]
        assert repo.get_project(s, 1).settings == {"a": 1}  # type: ignore[union-attr]
        assert repo.list_presets(s, 1)[0].config == {"b": 0.2}
        repo.review_prediction(s, 2, "defect")  # and the new column is writable
    engine.dispose()


def test_0004_turns_bank_rows_into_state_versions_with_manifests(db_url: str) -> None:
    """A 0003 database with rows in every table, upgraded: nothing lost, ids kept, each bank
    row a state version with its format and manifest, children re-pointed; new rows get
    fresh ids (PostgreSQL's sequence moved past the copied ones); downgrade restores."""
    upgrade(db_url, "0003_run_heartbeat")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        _insert_0001_rows(conn)
        conn.execute(text("UPDATE model_versions SET artifact_dir = 'projects/1/models/1'"))
        conn.execute(text(
            "UPDATE memory_bank_versions SET file_path = 'projects/1/models/1/bank.safetensors',"
            " sha256 = 'a1' WHERE id = 1"))
        conn.execute(text(
            "UPDATE memory_bank_versions SET sha256 = 'b2',"
            " file_path = 'projects/1/models/1/banks/u.safetensors' WHERE id = 2"))
        before = _counts(conn, OLD_TABLES)
    engine.dispose()

    upgrade(db_url)

    engine = make_engine(db_url)
    assert "memory_bank_versions" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        assert list(_counts(conn, [RENAMED.get(t, t) for t in OLD_TABLES]).values()) == list(
            before.values())
        assert conn.execute(text("SELECT COUNT(*) FROM provenance_records")).scalar() == 0
    with session_scope(engine) as s:
        v1, v2 = repo.list_state_versions(s, 1)
        assert (v1.state_format, v1.directory, v1.files) == (
            "kensa_patchcore", "projects/1/models/1", {"bank.safetensors": "a1"})
        assert (v2.directory, v2.files) == ("projects/1/models/1", {"banks/u.safetensors": "b2"})
        assert (v1.vector_count, v1.dim, v1.source_images, v1.is_active) == (10, 4, ["aa"], False)
        assert (v2.parent_id, v2.kind, v2.is_active) == (v1.id, "incremental", True)
        assert [t.id for t in repo.list_thresholds(s, v2.id)] == [1, 2]
        assert {p.state_version_id for p in repo.list_predictions(s, 1)} == {2}
        v3 = repo.add_state_version(s, 1, kind="online", state_format="anomalib_patchcore",
                                    directory="d", files={"model.json": "c3"})
        assert v3.id == 3 and v3.version == 3 and v3.vector_count is None
        repo.add_provenance(s, 1, v3.id, [{
            "record_id": repo.next_provenance_id(s, 1), "path": "a.png", "sha256": "aa",
            "view": "rot0", "height": 8, "width": 8, "grid_height": 1, "grid_width": 1}])
    engine.dispose()

    downgrade(db_url, "0003_run_heartbeat")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT id, file_path, sha256, vector_count FROM memory_bank_versions ORDER BY id"
        )).all()
        assert [tuple(r) for r in rows] == [
            (1, "projects/1/models/1/bank.safetensors", "a1", 10),
            (2, "projects/1/models/1/banks/u.safetensors", "b2", 12),
            (3, "d/model.json", "c3", 0),
        ]
        assert conn.execute(text(
            "SELECT COUNT(*) FROM predictions WHERE bank_version_id = 2")).scalar() == 2
    engine.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    upgrade(db_url)
    downgrade(db_url, "0001_initial")
    assert current_revision(db_url) == "0001_initial"
    downgrade(db_url, "base")
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()


def test_table_rebuilds_in_migrations_keep_child_rows(db_url: str, db_kind: str) -> None:
    """A batch migration that recreates a parent table must not cascade-delete its children:
    migrations run with SQLite foreign keys off (db.migrate.migration_engine)."""
    if db_kind != "sqlite":
        pytest.skip("table rebuilds are SQLite batch mode; PostgreSQL alters in place")
    upgrade(db_url, "0001_initial")
    engine = migration_engine(db_url)
    with engine.begin() as conn:
        _insert_0001_rows(conn)
        ops = Operations(MigrationContext.configure(conn))
        with ops.batch_alter_table("projects", recreate="always") as batch_op:
            batch_op.alter_column(
                "data_root",
                existing_type=Base.metadata.tables["projects"].c.data_root.type,
                nullable=False,
            )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM images")).scalar() == 2
        assert conn.execute(text("SELECT COUNT(*) FROM predictions")).scalar() == 2
    engine.dispose()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        upgrade("sqlite://")


def test_upgrade_needs_no_particular_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("KENSA_HOME", str(tmp_path / "home"))
    upgrade()  # default URL: $KENSA_HOME/kensa.db
    assert current_revision() == head_revision()
    assert (tmp_path / "home" / "kensa.db").is_file()


def test_alembic_cli_works_from_anywhere(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    run = [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), "-x", f"url={url}"]
    subprocess.run([*run, "upgrade", "head"], cwd=tmp_path, check=True, capture_output=True)
    out = subprocess.run(
        [*run, "current"], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    assert f"{head_revision()} (head)" in out.stdout
    assert ROOT.joinpath("db", "alembic.ini") == ALEMBIC_INI


def test_autogenerate_renders_plain_types(db_url: str) -> None:
    """New revisions must not import db.models: UTCDateTime renders as sa.DateTime
    (env.py passes the same render_item to autogenerate)."""
    from alembic.autogenerate import produce_migrations, render_python_code

    from db.migrate import render_item

    upgrade(db_url, "0001_initial")  # 0002's reviewed_at is then "new" to autogenerate
    engine = make_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"target_metadata": Base.metadata, "render_item": render_item}
        )
        ops = produce_migrations(context, Base.metadata).upgrade_ops
        code = render_python_code(ops, render_item=render_item, migration_context=context)
    engine.dispose()
    assert "reviewed_at" in code and "sa.DateTime(timezone=True)" in code
    assert "db.models" not in code

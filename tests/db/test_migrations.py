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


def test_upgrade_reaches_head_and_is_idempotent(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    upgrade(db_url)  # the app calls it on every start
    assert current_revision(db_url) == head_revision() == "0003_run_heartbeat"
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
        before = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES}
    engine.dispose()

    upgrade(db_url)

    engine = make_engine(db_url)
    insp = inspect(engine)
    assert current_revision(db_url) == "0003_run_heartbeat"
    assert "reviewed_at" in {c["name"] for c in insp.get_columns("predictions")}
    assert "heartbeat_at" in {c["name"] for c in insp.get_columns("model_versions")}
    assert "ix_predictions_bank_version_id" in {i["name"] for i in insp.get_indexes("predictions")}
    assert "ix_images_project_id_label" in {i["name"] for i in insp.get_indexes("images")}
    with engine.begin() as conn:
        after = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in TABLES}
    assert after == before and all(after.values())
    with session_scope(engine) as s:  # the old rows read through today's code
        (pred, _) = repo.list_predictions(s, 1)
        assert (pred.raw_score, pred.regions, pred.reviewed_verdict) == (3.5, [{"area": 5}], "good")
        assert pred.reviewed_at is None and pred.created_at.tzinfo is not None
        assert repo.get_active_bank_version(s, 1).parent_id == 1  # type: ignore[union-attr]
        assert repo.get_active_threshold(s, 2).method == "manual"  # type: ignore[union-attr]
        assert repo.get_project(s, 1).settings == {"a": 1}  # type: ignore[union-attr]
        assert repo.list_presets(s, 1)[0].config == {"b": 0.2}
        repo.review_prediction(s, 2, "defect")  # and the new column is writable
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
    assert "0003_run_heartbeat (head)" in out.stdout
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

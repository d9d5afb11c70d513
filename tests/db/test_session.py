"""Engine factory, per-connection SQLite settings, transaction scopes and UTC timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, StatementError

import db.repositories as repo
from db.session import (
    database_url,
    get_engine,
    kensa_home,
    make_engine,
    normalize_url,
    session_scope,
    url_string,
)


def test_database_url_defaults_to_sqlite_in_kensa_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("KENSA_HOME", str(tmp_path / "home"))
    assert database_url() == f"sqlite:///{tmp_path / 'home' / 'kensa.db'}"
    assert kensa_home().is_dir()
    monkeypatch.delenv("KENSA_HOME")
    monkeypatch.chdir(tmp_path)
    assert kensa_home() == tmp_path / "kensa_data"
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@h/db")
    assert database_url() == "postgresql+psycopg://u:p@h/db"


def test_bare_postgres_urls_get_the_installed_driver() -> None:
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert url_string("postgresql://u:secret@h/db") == "postgresql+psycopg://u:secret@h/db"


def test_get_engine_is_cached_per_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert get_engine(url) is get_engine(url)
    assert get_engine(url) is not get_engine(f"sqlite:///{tmp_path / 'b.db'}")


def test_sqlite_pragmas_on_every_connection(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}", pool_size=2)
    conns = [engine.connect(), engine.connect()]  # two distinct pooled connections
    for conn in conns:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("foreign_keys", "journal_mode", "busy_timeout", "synchronous")
        }
        assert pragma == {
            "foreign_keys": 1,
            "journal_mode": "wal",
            "busy_timeout": 30_000,
            "synchronous": 1,
        }
        conn.close()
    engine.dispose()


def test_readonly_scope_refuses_writes(engine: Engine) -> None:
    with pytest.raises(DBAPIError), session_scope(engine, readonly=True) as s:
        repo.create_project(s, "nope", "/n")
    with session_scope(engine) as s:  # the pooled connection is writable again
        repo.create_project(s, "yes", "/y")
    with session_scope(engine, readonly=True) as s:
        assert [p.name for p in repo.list_projects(s)] == ["yes"]


def test_readers_do_not_wait_for_an_open_writer(engine: Engine) -> None:
    other = make_engine(engine.url)
    with session_scope(engine) as writer:
        repo.create_project(writer, "uncommitted", "/u")
        with session_scope(other, readonly=True) as reader:  # would hang if it needed the lock
            assert repo.list_projects(reader) == []
    with session_scope(other, readonly=True) as reader:
        assert [p.name for p in repo.list_projects(reader)] == ["uncommitted"]
    other.dispose()


def test_timestamps_come_back_aware_utc(engine: Engine) -> None:
    cest = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 14, 30, 15, 123456, tzinfo=cest)
    with session_scope(engine) as s:
        project = repo.create_project(s, "p", "/p")
        batch = repo.create_batch(s, project.id, "b")
        repo.finish_batch(s, batch.id, local)
    with session_scope(engine, readonly=True) as s:
        got = repo.get_batch(s, batch.id)
        assert got is not None and got.finished_at == local
        assert got.finished_at.tzinfo == UTC and got.finished_at.hour == 12  # type: ignore[union-attr]
        assert got.started_at.tzinfo == UTC
        assert abs(datetime.now(UTC) - got.started_at) < timedelta(minutes=5)
    with session_scope(engine) as s:  # the server default (raw SQL) also reads back aware UTC
        s.execute(
            text("INSERT INTO projects (name, data_root, settings) VALUES ('raw', '/', '{}')")
        )
        raw = repo.get_project_by_name(s, "raw")
        assert raw is not None and raw.created_at.tzinfo == UTC
        assert abs(datetime.now(UTC) - raw.created_at) < timedelta(minutes=5)


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive"), session_scope(engine) as s:
        project = repo.create_project(s, "p", "/p")
        batch = repo.create_batch(s, project.id, "b")
        repo.finish_batch(s, batch.id, datetime(2026, 1, 1))

"""Engines and transactions: the one module that knows how Kensa talks to its database.

SQLite is the default and is written to by several processes at once (the Streamlit app, a
training worker, the CLI). Two things make that safe:

* every connection gets ``busy_timeout``, WAL and foreign keys (pragmas are per connection);
* write transactions start with ``BEGIN IMMEDIATE``. pysqlite's own deferred BEGIN takes the
  write lock only at the first INSERT/UPDATE, and a transaction that read first and then
  wants to write while another writer committed fails at once with "database is locked"
  (SQLITE_BUSY_SNAPSHOT; the busy handler cannot help). Taking the lock up front makes
  writers queue on ``busy_timeout`` instead. Read-only scopes use a plain deferred BEGIN so
  they never wait for writers (WAL readers see the last committed snapshot).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session

DEFAULT_HOME = "kensa_data"
SQLITE_BUSY_TIMEOUT_S = 30.0
_READONLY = "kensa_readonly"  # execution option read by the SQLite BEGIN hook


def kensa_home() -> Path:
    """Data directory for the default database and artifacts (``KENSA_HOME``), created."""
    home = Path(os.environ.get("KENSA_HOME") or DEFAULT_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def database_url() -> str:
    """``DATABASE_URL`` if set, else the SQLite file ``$KENSA_HOME/kensa.db``."""
    return os.environ.get("DATABASE_URL") or f"sqlite:///{kensa_home() / 'kensa.db'}"


def normalize_url(url: str | URL) -> URL:
    """Parse a URL; bare ``postgres(ql)://`` gets the psycopg 3 driver that is installed."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def url_string(url: str | URL) -> str:
    """URL as text with its password kept (``str(URL)`` masks it)."""
    return normalize_url(url).render_as_string(hide_password=False)


def make_engine(
    url: str | URL | None = None, *, foreign_keys: bool = True, **kwargs: Any
) -> Engine:
    """A new engine for ``url`` (default: ``database_url()``).

    ``foreign_keys=False`` exists for migrations only: SQLite batch migrations recreate tables,
    and dropping a parent table with enforcement on would cascade-delete its children.
    """
    parsed = normalize_url(url or database_url())
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)

    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy emits BEGIN itself (see _begin).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")  # first: the pragmas below may wait
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable across crashes in WAL mode
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        readonly = bool(conn.get_execution_options().get(_READONLY, False))
        conn.exec_driver_sql(f"PRAGMA query_only = {int(readonly)}")
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL once (the mode is stored in the file, so later connections only
    read it). Two processes opening a fresh file at once can both try to switch; SQLite answers
    "database is locked" at once there without calling the busy handler, so retry briefly."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() not in ("wal", "memory"):
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def get_engine(url: str | URL | None = None) -> Engine:
    """Process-wide engine per URL, for the app and CLI (workers in other processes make
    their own: an engine must not cross a fork)."""
    return _cached_engine(url_string(url or database_url()))


@functools.cache
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


@contextmanager
def session_scope(engine: Engine, *, readonly: bool = False) -> Iterator[Session]:
    """One transaction: commit on success, rollback on any error.

    The service layer opens one scope per use case and passes the session to the repository
    functions, which never commit. Returned objects stay readable after the scope
    (``expire_on_commit=False``); the models have no ORM relationships to lazy-load, so
    nothing touches the database once the scope is closed. ``readonly=True`` never waits
    for writers on SQLite and refuses writes (``query_only`` on SQLite, a READ ONLY
    transaction on PostgreSQL).
    """
    bind = (
        engine.execution_options(**{_READONLY: True, "postgresql_readonly": True})
        if readonly
        else engine
    )
    with Session(bind, expire_on_commit=False) as session, session.begin():
        yield session

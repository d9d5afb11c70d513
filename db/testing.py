"""Throwaway databases for tests (any test folder), without pytest so it stays importable.

``kind`` is ``"sqlite"`` (a file under the given directory) or ``"postgres"`` (a database with
a unique name on the server of ``KENSA_TEST_POSTGRES_URL``, dropped afterwards; start one
with ``export KENSA_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"``).

Typical pytest use (see tests/db/conftest.py): ``make_migrated_database`` once per module,
``reset_database`` before each test. Creating a PostgreSQL database is cheap but dropping one
forces a checkpoint (~0.3 s), so per-test databases are kept for the tests that need an empty
or un-migrated one (``make_test_database``).
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from db.migrate import upgrade
from db.models import Base
from db.session import make_engine, normalize_url, url_string

POSTGRES_ENV = "KENSA_TEST_POSTGRES_URL"
KINDS = ("sqlite", "postgres")


class PostgresNotConfigured(RuntimeError):
    """The postgres kind was asked for but ``KENSA_TEST_POSTGRES_URL`` is not set."""


def postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


@contextmanager
def make_test_database(kind: str, directory: Path) -> Iterator[str]:
    """An empty database; yields its URL, drops it (PostgreSQL) on exit."""
    if kind == "sqlite":
        yield f"sqlite:///{Path(directory) / f'kensa-{uuid.uuid4().hex[:8]}.db'}"
        return
    if kind != "postgres":
        raise ValueError(f"unknown database kind {kind!r}; expected one of {KINDS}")
    admin_url = postgres_admin_url()
    if admin_url is None:
        raise PostgresNotConfigured(f"{POSTGRES_ENV} not set")
    name = f"kensa_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield url_string(normalize_url(admin_url).set(database=name))
        finally:
            _drop(admin, name)
    finally:
        admin.dispose()


def _drop(admin: Any, name: str, attempts: int = 10) -> None:
    """Drop a test database, retrying: ``WITH (FORCE)`` terminates the other sessions, but a
    non-superuser may not terminate an autovacuum worker that happens to be in the database
    ("must be a member of the role whose process is being terminated"); it leaves within
    moments. A database still there after the retries is left behind with a warning: it
    holds test rows only, and failing a passed test for it would be noise."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except DBAPIError as exc:  # InsufficientPrivilege, or the server busy
            last = exc
            time.sleep(0.2 * (attempt + 1))
    warnings.warn(f"test database {name} could not be dropped: {last}", stacklevel=2)


@contextmanager
def make_migrated_database(kind: str, directory: Path) -> Iterator[str]:
    """Like ``make_test_database``, upgraded to head the way the app does it."""
    with make_test_database(kind, directory) as url:
        upgrade(url)
        yield url


def reset_database(engine: Engine) -> None:
    """Empty every Kensa table (the schema and alembic_version stay) and restart ids.

    DELETE, children first, rather than TRUNCATE: on tiny tables it is ~50x faster on
    PostgreSQL (TRUNCATE swaps and syncs files), which matters once per test.
    """
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        for table in tables:
            conn.execute(text(f"DELETE FROM {table}"))
        if conn.dialect.name == "postgresql":
            for table in tables:
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1, false)")
                )

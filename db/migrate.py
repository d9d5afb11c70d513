"""Schema upgrades, run programmatically: the app and the CLI call ``upgrade()`` on start.

``upgrade()`` is idempotent and safe when two processes start at once: the whole upgrade runs
in ONE transaction that first takes a database-wide lock (``BEGIN IMMEDIATE`` on SQLite, an
advisory transaction lock on PostgreSQL) and only then reads the current revision, so the
second process waits and then finds nothing left to do. Both backends have transactional
DDL here, so a failed migration leaves the schema as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from db.models import UTCDateTime
from db.session import database_url, make_engine, normalize_url, url_string

ALEMBIC_INI = Path(__file__).resolve().with_name("alembic.ini")
# Arbitrary constant shared by every Kensa process: "one migrator at a time" on PostgreSQL.
PG_MIGRATION_LOCK = 0x4B454E5341


def alembic_config(url: str | URL | Engine | None = None) -> Config:
    """Alembic config with absolute paths; the URL travels in ``attributes`` (no %-escaping)."""
    cfg = Config(str(ALEMBIC_INI))
    cfg.attributes["url"] = _url_of(url)
    return cfg


def upgrade(url: str | URL | Engine | None = None, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` for ``url`` (an engine's URL; default ``database_url()``)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL | Engine | None, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str | URL | Engine | None = None) -> str | None:
    engine = make_engine(_url_of(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()


def migration_engine(url: str | URL) -> Engine:
    """Engine for schema changes: no pooling, and SQLite foreign keys OFF.

    Batch migrations on SQLite copy a table, drop the original and rename the copy; with
    enforcement on, that DROP would cascade-delete every child row. Integrity is checked
    once at the end instead (``check_foreign_keys``).
    """
    return make_engine(url, foreign_keys=False, poolclass=NullPool)


def lock_for_migration(conn: Connection) -> None:
    """Serialize migrators. SQLite: the transaction's BEGIN IMMEDIATE already holds the lock."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")


def check_foreign_keys(conn: Connection) -> None:
    """Fail the migration (and roll it back) if it left dangling references on SQLite."""
    if conn.dialect.name != "sqlite":
        return
    bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if bad:
        raise RuntimeError(f"migration left foreign key violations: {bad[:10]}")


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Autogenerate hook: write UTCDateTime as its plain SQL type, so revisions never import
    db.models (a migration must keep working after the models change)."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _url_of(url: str | URL | Engine | None) -> str:
    if isinstance(url, Engine):
        url = url.url
    parsed = normalize_url(url or database_url())
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("migrations need a database file; in-memory SQLite is per connection")
    return url_string(parsed)

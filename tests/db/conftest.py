"""Database fixtures: every test runs on SQLite, and on PostgreSQL when
``KENSA_TEST_POSTGRES_URL`` is set (``export KENSA_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"``).

Without the variable the postgres cases are skipped with a visible reason, unless ``CI`` or
``KENSA_REQUIRE_POSTGRES`` is set: then they fail, so CI cannot pass without PostgreSQL.
Other test folders can import these fixtures: ``from tests.db.conftest import engine, ...``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from db.session import make_engine
from db.testing import (
    KINDS,
    POSTGRES_ENV,
    make_migrated_database,
    make_test_database,
    postgres_admin_url,
    reset_database,
)


@pytest.fixture(scope="session", params=KINDS)
def db_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "postgres" and postgres_admin_url() is None:
        if os.environ.get("CI") or os.environ.get("KENSA_REQUIRE_POSTGRES"):
            pytest.fail(f"{POSTGRES_ENV} not set but PostgreSQL is required here")
        pytest.skip(f"{POSTGRES_ENV} not set")
    return kind


@pytest.fixture
def db_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, EMPTY database (no schema): for migration and concurrency tests."""
    with make_test_database(db_kind, tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def migrated_url(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database per module and kind, upgraded to head with ``db.migrate.upgrade``."""
    with make_migrated_database(db_kind, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    """Engine on the module's migrated database, emptied before each test."""
    eng = make_engine(migrated_url)
    reset_database(eng)
    yield eng
    eng.dispose()

"""The ``Kensa`` context: where the data lives and how to reach the database.

Every use case takes one explicitly instead of reading globals, so a test, the CLI, a worker
process and the Streamlit app can each point at their own ``KENSA_HOME`` and database. Building
one upgrades the schema (idempotent, safe with concurrent starters: see ``db.migrate``).

Artifact paths are stored in the database RELATIVE to ``KENSA_HOME`` (POSIX separators) and
resolved here, so a data directory can be moved or mounted elsewhere without rewriting rows.
Layout::

    $KENSA_HOME/kensa.db                                   default SQLite database
    $KENSA_HOME/projects/<project>/models/<model>/model.json, bank.safetensors   (state v1)
    $KENSA_HOME/projects/<project>/models/<model>/states/<uuid>/...             (state v2, v3...)
    $KENSA_HOME/projects/<project>/models/<model>/banks/<uuid>.safetensors      (bank v2+ < 0004)
    $KENSA_HOME/projects/<project>/models/<model>/validation/<sha256>.png       (heatmaps)
    $KENSA_HOME/projects/<project>/models/<model>/worker.log
    $KENSA_HOME/projects/<project>/heatmaps/<batch>/<sha256>.png
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.migrate import upgrade
from db.session import DEFAULT_HOME, make_engine, session_scope, url_string

HOME_ENV = "KENSA_HOME"
DATABASE_ENV = "DATABASE_URL"


@dataclass(frozen=True)
class Kensa:
    """Data directory + database of one Kensa installation (no hidden global state)."""

    home: Path
    database_url: str
    engine: Engine

    @classmethod
    def create(
        cls, home: str | os.PathLike[str] | None = None, database_url: str | None = None,
        *, migrate: bool = True,
    ) -> Kensa:
        """Context for ``home``/``database_url``, defaulting to the environment.

        ``KENSA_HOME`` defaults to ``./kensa_data``; ``DATABASE_URL`` to the SQLite file
        ``$KENSA_HOME/kensa.db``. The schema is brought to head unless ``migrate=False``.
        """
        root = Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        url = url_string(
            database_url or os.environ.get(DATABASE_ENV) or f"sqlite:///{root / 'kensa.db'}"
        )
        if migrate:
            upgrade(url)
        return cls(root, url, make_engine(url))

    def close(self) -> None:
        """Release pooled connections (tests, short-lived workers)."""
        self.engine.dispose()

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """One transaction (see ``db.session.session_scope``); keep write scopes short."""
        with session_scope(self.engine, readonly=readonly) as session:
            yield session

    def env(self) -> dict[str, str]:
        """Environment for a child process (worker) that must see the same data and database."""
        return {**os.environ, HOME_ENV: str(self.home), DATABASE_ENV: self.database_url}

    # -- artifact paths (absolute) ----------------------------------------------------------
    def project_dir(self, project_id: int) -> Path:
        return self.home / "projects" / str(project_id)

    def model_dir(self, project_id: int, model_version_id: int) -> Path:
        return self.project_dir(project_id) / "models" / str(model_version_id)

    def new_bank_file(self, project_id: int, model_version_id: int) -> Path:
        """A fresh, never-reused file name for bank v2+.

        The version number is only known inside the transaction that creates the row, and
        the file must exist before that row; a unique name means two concurrent updates (or
        a retry after a crash) can never overwrite a file a row already points at.
        """
        name = f"{uuid.uuid4().hex}.safetensors"
        return self.model_dir(project_id, model_version_id) / "banks" / name

    def new_state_dir(self, project_id: int, model_version_id: int) -> Path:
        """A fresh, never-reused folder for the files of state v2+ (same reasoning as
        :meth:`new_bank_file`: the folder exists before the row that points at it)."""
        return self.model_dir(project_id, model_version_id) / "states" / uuid.uuid4().hex

    def validation_heatmap(self, project_id: int, model_version_id: int, sha256: str) -> Path:
        return self.model_dir(project_id, model_version_id) / "validation" / f"{sha256}.png"

    def heatmap_path(self, project_id: int, batch_id: int, sha256: str) -> Path:
        return self.project_dir(project_id) / "heatmaps" / str(batch_id) / f"{sha256}.png"

    # -- stored <-> absolute ----------------------------------------------------------------
    def stored(self, path: str | os.PathLike[str]) -> str:
        """How a path is written to the database: relative to home when it is inside it."""
        p = Path(path).resolve()
        try:
            return p.relative_to(self.home).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, stored: str | None) -> Path | None:
        """Absolute path of a stored artifact path (absolute paths pass through)."""
        if stored is None:
            return None
        p = Path(stored)
        return p if p.is_absolute() else self.home / p

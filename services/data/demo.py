"""The bundled demo project, so a fresh install opens on something that works.

On the first start with an empty database, ``ensure_demo`` copies ``demo_data/magnetic_tile_demo``
(a small subset of the Magnetic Tile Defect data set) into ``$KENSA_HOME/imports/demo/`` and
creates the project "demo" from it. It runs at most once per data directory: a marker file
records that it happened, so a user who deletes the demo does not get it back. Two app
sessions starting at once are serialised by a file lock; on a shared PostgreSQL database the
projects table's unique name is the last guard.

``KENSA_DEMO=0`` turns it off (tests that need an empty home, production installs).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from services.context import Kensa
from services.data.imports import import_dir, import_folder
from services.data.projects import create_project, list_projects

DEMO_NAME = "demo"
DEMO_SOURCE = Path(__file__).resolve().parents[2] / "demo_data" / "magnetic_tile_demo"
DEMO_ENV = "KENSA_DEMO"
MARKER = ".demo_done"
ATTRIBUTION = (
    "Demo images: a subset of the Magnetic Tile Defect data set from “Saliency of magnetic "
    "tile surface defects” (Y. Huang, C. Qiu, K. Yuan, The Visual Computer, 2018)."
)


def demo_enabled() -> bool:
    return os.environ.get(DEMO_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo(ctx: Kensa, source: Path = DEMO_SOURCE) -> str | None:
    """Create the demo project if this is a fresh install; returns its name when created.

    Idempotent: a second call (or a second process) finds the marker and does nothing. A
    database that already has projects never gets the demo added.
    """
    if not demo_enabled() or not source.is_dir():
        return None
    marker = ctx.home / MARKER
    if marker.exists():
        return None
    with _file_lock(ctx.home / ".demo.lock"):
        if marker.exists():
            return None
        if list_projects(ctx):
            marker.write_text("skipped: the database already had projects\n")
            return None
        report = import_folder(source, import_dir(ctx.home, DEMO_NAME))
        if report.dataset_root is None:  # pragma: no cover - the bundled data is a data set
            return None
        # IntegrityError: another host created it first on a shared database.
        with suppress(IntegrityError):
            create_project(ctx, DEMO_NAME, report.dataset_root)
        marker.write_text("created\n")
    return DEMO_NAME

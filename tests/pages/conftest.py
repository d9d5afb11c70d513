"""Fixtures for the page tests: a private KENSA_HOME per test, small generated projects, and
projects trained for real (tests/trained.py: once per session, copied per test).

The app reads KENSA_HOME / DATABASE_URL from the environment and caches one context per
value, so each test gets its own data directory and database. The bundled demo is switched
off (``KENSA_DEMO=0``) except where a test asks for it, so "empty" really means empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.context import Kensa
from services.data.projects import create_project
from tests.synthetic import make_mvtec
from tests.trained import build_template, copy_home

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 60


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("KENSA_HOME", str(path))
    monkeypatch.setenv("KENSA_DEMO", "0")
    # jobs (imports) run when submitted: AppTest has no worker process to wait for
    monkeypatch.setenv("KENSA_JOBS_INLINE", "1")
    monkeypatch.setenv("KENSA_LOCAL_WORKER", "0")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    # folder imports read the test's temp folder, outside the default import roots
    monkeypatch.setenv("KENSA_IMPORT_ROOTS", str(tmp_path))
    return path


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the trained projects of tests.trained.PROJECTS (built once per session)."""
    return build_template(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def trained(home: Path, trained_template: Path) -> Iterator[Kensa]:
    """This test's home as a copy of the trained template, and a context on it."""
    copy_home(trained_template, home)
    context = Kensa.create(home)
    yield context
    context.close()


@pytest.fixture
def ctx(home: Path) -> Iterator[Kensa]:
    context = Kensa.create(home)
    yield context
    context.close()


@pytest.fixture
def make_project(ctx: Kensa, tmp_path: Path) -> Callable[..., Path]:
    """``make_project(name, n_train=..., ...)``: a generated MVTec folder imported as a project."""

    def make(name: str = "widgets", **sizes: int) -> Path:
        root = make_mvtec(tmp_path / "data" / name, **sizes)
        create_project(ctx, name, root)
        return root

    return make


def open_app(page: str | None = None, project: str | None = None) -> AppTest:
    """Run the app once (home), then switch to ``page`` with ``?project=`` in the URL, as a
    link or a bookmark would."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if project is not None:
        at.query_params["project"] = project
    if page is not None:
        at.switch_page(page)
        at.run()
    return at


def texts(at: AppTest) -> str:
    """Everything a user reads on the page (markdown, captions, alerts, metrics), as one text."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning",
                 "error", "success", "exception"):
        parts.extend(str(getattr(e, "value", "")) for e in getattr(at, kind))
    parts.extend(f"{m.label}: {m.value}" for m in at.metric)
    parts.extend(str(getattr(e, "value", "")) for e in at.sidebar.markdown)
    return "\n".join(parts)

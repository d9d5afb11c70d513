"""What every page shares: the Kensa context, the chosen project, and the "what next" hints.

Not a page itself (app.py registers pages explicitly, so this module is never shown in the
navigation). It holds Streamlit glue only; every number comes from a service.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import streamlit as st
from streamlit import config
from streamlit.runtime.pages_manager import PagesManager

from services.context import Kensa

PROJECT_KEY = "project"
PENDING_KEY = "_pending_project"

DATASETS_PAGE = "pages/datasets.py"
TRAINING_PAGE = "pages/training.py"
EVALUATION_PAGE = "pages/evaluation.py"
HOME_PAGE = "pages/home.py"
NEW_PROJECT_PAGE = "pages/new_project.py"
APP_SCRIPT = Path(__file__).resolve().parent.parent / "app.py"


def route_through_app() -> None:
    """Make sure this page runs inside app.py's router, not as a bare script.

    Streamlit sees the ``pages/`` folder and, until ``st.navigation`` has run once in the
    process, serves a URL such as ``/datasets`` by running ``pages/datasets.py`` alone (its
    legacy multipage mode): no sidebar, no project picker, an auto-generated menu. That
    happens on the first request after a server start that is not for the home page, and on
    every ``AppTest`` run (AppTest resets the mode before each run). The legacy mode is
    switched off here and the request goes through app.py, whose ``st.navigation`` serves
    the same URL properly: on a server by a rerun (a first request has no click to lose);
    under AppTest by running app.py inside this run, because a rerun would drop the button
    click being tested. Called first thing by every page; a no-op once app.py has routed.
    """
    if not PagesManager.uses_pages_directory:
        return
    PagesManager.uses_pages_directory = False
    if not config.get_option("global.appTest"):
        st.rerun()
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()


@st.cache_resource(show_spinner="Opening the Kensa database…")
def _context(home: str, database_url: str) -> Kensa:
    """One context per data directory and database per server process (schema upgraded once).

    Keyed by the environment so tests that point KENSA_HOME elsewhere get their own.
    """
    return Kensa.create(home or None, database_url or None)


def context() -> Kensa:
    return _context(os.environ.get("KENSA_HOME", ""), os.environ.get("DATABASE_URL", ""))


def current_project() -> str | None:
    value = st.session_state.get(PROJECT_KEY)
    return str(value) if value else None


def open_project(name: str, page: str | None = None) -> None:
    """Make ``name`` the sidebar's project on the next run (a widget's value cannot be set
    after it was drawn in this run), then go to ``page`` or rerun."""
    st.session_state[PENDING_KEY] = name
    if page:
        st.switch_page(page)
    st.rerun()


def need_project() -> str | None:
    """The chosen project, or a hint that says how to get one (and None)."""
    name = current_project()
    if name is None:
        st.info(
            "No project yet. A project is a set of images of one part or product. "
            "Create one from a folder of images or a zip file."
        )
        st.page_link(NEW_PROJECT_PAGE, label="Create a project",
                     icon=":material/add_photo_alternate:")
    return name


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for display, or an em dash when it does not exist (never a fake 0)."""
    return "—" if value is None else f"{value:.{digits}f}"

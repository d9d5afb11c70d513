"""What every page shares: the Kensa context, the chosen project, and the "what next" hints.

Not a page (the page scripts live in ``app_pages/``, registered by app.py). It holds Streamlit
glue only; every number comes from a service.

The chosen project lives in the URL (``?project=NAME``) so that a reload, a bookmark or a shared
link opens the same project; the sidebar picker writes it, every page reads it from there.
"""

from __future__ import annotations

import os
import string

import streamlit as st

from services.context import Kensa

#: The query parameter that names the chosen project.
PROJECT_PARAM = "project"
#: The sidebar picker's widget key; its value mirrors the URL and is only UI state.
PROJECT_KEY = "project_picker"
#: The project the router resolved from the URL for this run (None: none or unknown). Also what
#: goes back into the URL when a click in Streamlit's page menu drops the query string.
CHOSEN_KEY = "_project"

DATASETS_PAGE = "app_pages/datasets.py"
AUGMENTATION_PAGE = "app_pages/augmentation.py"
TRAINING_PAGE = "app_pages/training.py"
EVALUATION_PAGE = "app_pages/evaluation.py"
EXPLAINABILITY_PAGE = "app_pages/explainability.py"
LOTS_PAGE = "app_pages/lots.py"
DRIFT_PAGE = "app_pages/drift.py"
NEW_PROJECT_PAGE = "app_pages/new_project.py"


@st.cache_resource(show_spinner="Opening the Kensa database…")
def _context(home: str, database_url: str) -> Kensa:
    """One context per data directory and database per server process (schema upgraded once).

    Keyed by the environment so tests that point KENSA_HOME elsewhere get their own.
    """
    return Kensa.create(home or None, database_url or None)


def context() -> Kensa:
    return _context(os.environ.get("KENSA_HOME", ""), os.environ.get("DATABASE_URL", ""))


def resolve_project(names: list[str]) -> str | None:
    """Read the chosen project from the URL; called by app.py's router before every page.

    No ``project`` in the URL (a first visit, or Streamlit's page menu dropped the query
    string) means the project of the previous run, else the first one, written into the URL so
    the address bar always says what is shown. A name that matches no project stays in the URL
    and resolves to None: the router says so rather than switching projects silently.
    """
    requested = st.query_params.get(PROJECT_PARAM)
    if not requested:
        previous = st.session_state.get(CHOSEN_KEY)
        requested = previous if previous in names else (names[0] if names else None)
        if requested:
            st.query_params[PROJECT_PARAM] = requested
    chosen = requested if requested in names else None
    st.session_state[CHOSEN_KEY] = chosen
    return chosen


def current_project() -> str | None:
    """The chosen project, as resolved from the URL by the router for this run."""
    return st.session_state.get(CHOSEN_KEY)


def unknown_project() -> str | None:
    """A project name from the URL that matches no project (a stale bookmark, a typo)."""
    requested = st.query_params.get(PROJECT_PARAM)
    return requested if requested and requested != current_project() else None


def with_project(name: str | None) -> dict[str, str]:
    """Query parameters for ``st.page_link``/``st.switch_page`` that keep ``name`` chosen."""
    return {PROJECT_PARAM: name} if name else {}


def choose_project(name: str) -> None:
    """Put ``name`` into the URL; the next run (and every page after it) shows it."""
    st.query_params[PROJECT_PARAM] = name


def open_project(name: str, page: str | None = None) -> None:
    """Choose ``name`` and go to ``page``, or rerun on this one."""
    if page:
        st.switch_page(page, query_params=with_project(name))
    choose_project(name)
    st.rerun()


def need_project() -> str | None:
    """The chosen project, or a hint that says how to get one (and None)."""
    name = current_project()
    if name is None and unknown_project() is None:  # an unknown name: the router said so
        st.info(
            "No project yet. A project is a set of images of one part or product. "
            "Create one from a folder of images or a zip file."
        )
        st.page_link(NEW_PROJECT_PAGE, label="Create a project",
                     icon=":material/add_photo_alternate:")
    return name


#: Every ASCII punctuation character, each backslash-escaped: CommonMark allows escaping any
#: of them, and together they cover Markdown, GFM (tables, ~~, autolinks through ``.`` and
#: ``:``), Streamlit's directives (``:red[…]``, ``:material/…:``) and LaTeX (``$``).
_MD_ESCAPES = str.maketrans({c: "\\" + c for c in string.punctuation})


def plain(text: object) -> str:
    """``text`` escaped for the elements that render Markdown (titles, captions, alerts, labels,
    help, image captions, progress texts), on one line, so it shows exactly as typed.

    Names and file names come from users and from archives: a project called
    ``![x](http://host/a.png)`` made every browser that opened the list fetch that address, and
    ``[link](http://x)`` showed a link Kensa never wrote. Error texts quote names too, so they
    go through here as well. ``st.text``, dataframes and select options are plain already.
    """
    return " ".join(str(text).split()).translate(_MD_ESCAPES)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for display, or an em dash when it does not exist (never a fake 0)."""
    return "—" if value is None else f"{value:.{digits}f}"

"""Kensa workbench: the router. ``streamlit run app.py``

Registers the page files explicitly (``st.navigation``), draws the sidebar project picker and
creates the bundled demo project on the first start of a fresh install. Page scripts live in
``app_pages/`` and shared page glue in ``ui/``: a folder named ``pages/`` next to this file would
make Streamlit serve its files as pages on its own until ``st.navigation`` has run once (DESIGN
§9). The chosen project is the URL's ``?project=`` parameter (ui.common.resolve_project).
"""

from __future__ import annotations

import streamlit as st

from services.context import Kensa
from services.data.demo import ensure_demo
from services.data.projects import list_projects
from ui.common import (
    AUGMENTATION_PAGE,
    DATASETS_PAGE,
    DRIFT_PAGE,
    EVALUATION_PAGE,
    EXPLAINABILITY_PAGE,
    LOTS_PAGE,
    NEW_PROJECT_PAGE,
    PROJECT_KEY,
    TRAINING_PAGE,
    choose_project,
    context,
    plain,
    resolve_project,
    unknown_project,
    with_project,
)

st.set_page_config(
    page_title="Kensa · visual inspection",
    page_icon=":material/frame_inspect:",
    layout="wide",
    initial_sidebar_state="expanded",
)


@st.cache_resource(show_spinner="Preparing the demo project…")
def _bootstrap(home: str) -> str | None:
    """Create the demo project once per data directory and server process (services.data.demo)."""
    return ensure_demo(context())


def _sidebar(ctx: Kensa) -> None:
    """The project picker (it writes the URL) and the New project button."""
    names = [p["name"] for p in list_projects(ctx)]
    chosen = resolve_project(names)
    st.session_state[PROJECT_KEY] = chosen  # the URL decides; the widget only shows it
    with st.sidebar:
        st.selectbox(
            "Project",
            names,
            key=PROJECT_KEY,
            placeholder="Choose a project" if names else "No project yet",
            on_change=_picked,
            help="A project holds the images, models and thresholds of one part or product.",
        )
        if st.button("New project", icon=":material/add:", width="stretch"):
            st.switch_page(NEW_PROJECT_PAGE, query_params=with_project(chosen))
    missing = unknown_project()
    if missing is not None:
        st.warning(f"There is no project named “{plain(missing)}” (the link may be old, or the "
                   "project was renamed). Choose a project in the sidebar.",
                   icon=":material/search_off:")


def _picked() -> None:
    """The picker changed: the URL follows, so a reload or a copied link keeps the choice."""
    if st.session_state[PROJECT_KEY]:
        choose_project(st.session_state[PROJECT_KEY])


ctx = context()
try:
    _bootstrap(str(ctx.home))
except Exception as exc:  # noqa: BLE001 - a broken demo must never keep the app from opening
    st.sidebar.warning(f"The demo project could not be created: {plain(exc)}")

navigation = st.navigation(
    {
        "": [
            st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
            st.Page(NEW_PROJECT_PAGE, title="New project", icon=":material/add:",
                    url_path="new-project", visibility="hidden"),
        ],
        "Workbench": [
            st.Page(DATASETS_PAGE, title="Datasets", icon=":material/photo_library:",
                    url_path="datasets"),
            st.Page(AUGMENTATION_PAGE, title="Augmentation", icon=":material/auto_awesome_mosaic:",
                    url_path="augmentation"),
            st.Page(TRAINING_PAGE, title="Training", icon=":material/model_training:",
                    url_path="training"),
            st.Page(EVALUATION_PAGE, title="Evaluation", icon=":material/analytics:",
                    url_path="evaluation"),
            st.Page(EXPLAINABILITY_PAGE, title="Explainability", icon=":material/saved_search:",
                    url_path="explainability"),
            st.Page(LOTS_PAGE, title="Production lots", icon=":material/fact_check:",
                    url_path="lots"),
            st.Page(DRIFT_PAGE, title="Drift monitor", icon=":material/monitoring:",
                    url_path="drift"),
        ],
    }
)
_sidebar(ctx)  # after st.navigation: "New project" switches to a page it registered
navigation.run()

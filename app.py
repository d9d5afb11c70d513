"""Kensa workbench: the router. ``streamlit run app.py``

Registers the page files explicitly (``st.navigation``), draws the sidebar project picker and
creates the bundled demo project on the first start of a fresh install. Pages live in
``pages/``; each reads state, calls services and draws what they return.
"""

from __future__ import annotations

import streamlit as st

from pages.common import (
    DATASETS_PAGE,
    NEW_PROJECT_PAGE,
    PENDING_KEY,
    PROJECT_KEY,
    context,
)
from services.context import Kensa
from services.data.demo import ensure_demo
from services.data.projects import list_projects

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
    names = [p["name"] for p in list_projects(ctx)]
    pending = st.session_state.pop(PENDING_KEY, None)
    if pending in names:
        st.session_state[PROJECT_KEY] = pending
    if st.session_state.get(PROJECT_KEY) not in names:
        st.session_state[PROJECT_KEY] = names[0] if names else None
    with st.sidebar:
        st.selectbox(
            "Project",
            names,
            key=PROJECT_KEY,
            placeholder="No project yet",
            help="A project holds the images, models and thresholds of one part or product.",
        )
        if st.button("New project", icon=":material/add:", width="stretch"):
            st.switch_page(NEW_PROJECT_PAGE)


ctx = context()
try:
    _bootstrap(str(ctx.home))
except Exception as exc:  # noqa: BLE001 - a broken demo must never keep the app from opening
    st.sidebar.warning(f"The demo project could not be created: {exc}")

navigation = st.navigation(
    {
        "": [
            st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
            st.Page(NEW_PROJECT_PAGE, title="New project", icon=":material/add:",
                    url_path="new-project", visibility="hidden"),
        ],
        "Workbench": [
            st.Page(DATASETS_PAGE, title="Datasets", icon=":material/photo_library:",
                    url_path="datasets"),
            st.Page("pages/training.py", title="Training", icon=":material/model_training:",
                    url_path="training"),
            st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:",
                    url_path="evaluation"),
            # Part 2 adds here, in this order: "augmentation" (after Datasets),
            # "explainability" and "drift" (after Evaluation).
        ],
    }
)
_sidebar(ctx)  # after st.navigation: "New project" switches to a page it registered
navigation.run()

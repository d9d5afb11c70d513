"""New project: name it and bring its images (hidden from the menu; the sidebar button opens
it). A page of its own, so the menu's Datasets entry always leads away from the form."""

from __future__ import annotations

import streamlit as st

from pages.common import DATASETS_PAGE, current_project, route_through_app
from pages.import_form import new_project_form

route_through_app()
new_project_form()
if current_project() is not None:
    st.page_link(DATASETS_PAGE, label="Cancel: back to the current project",
                 icon=":material/arrow_back:")

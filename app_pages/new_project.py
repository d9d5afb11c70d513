"""New project: name it and bring its images (hidden from the menu; the sidebar button opens
it). A page of its own, so the menu's Datasets entry always leads away from the form."""

from __future__ import annotations

import streamlit as st

from ui.common import DATASETS_PAGE, current_project, with_project
from ui.import_form import new_project_form

new_project_form()
if current_project() is not None:
    st.page_link(DATASETS_PAGE, label="Cancel: back to the current project",
                 icon=":material/arrow_back:", query_params=with_project(current_project()))

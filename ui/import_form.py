"""The import forms (zip upload or server folder) shared by the New project and Datasets pages.

Not a page: app.py registers pages explicitly. Widgets and service calls only. An import is
a job (``services.jobs``): the copy and the hashing run in a worker, never in this script's
thread; the form shows the job's stage and progress until it ends.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from services.data.imports import (
    IMPORT_ROOTS_ENV,
    ImportRefused,
    import_roots,
    start_import_job,
)
from services.jobs.api import cancel as cancel_job
from services.jobs.api import get_job
from ui.common import DATASETS_PAGE, context, open_project, plain

LAST_IMPORT = "_last_import"
IMPORT_JOB = "_import_job"
GALLERY_PAGE_KEY = "ds_page"

MVTEC_LAYOUT = """my_part/
  train/good/      good, to learn from
  test/good/       good, to check with
  test/scratch/    defects, a folder per type
  ground_truth/scratch/<name>_mask.png"""
FLAT_LAYOUT = """my_part/
  good/                 good images
  defect/               defect images
                        (or defect/<defect type>/)
  mask/defect/          masks, same file names"""


def layout_help() -> None:
    """The two folder layouts Kensa understands, side by side."""
    st.markdown("**How to arrange the images** — the folder names matter, file names do not.")
    left, right = st.columns(2)
    left.caption("With a train / test split (MVTec layout)")
    left.code(MVTEC_LAYOUT, language=None)
    right.caption("Just good and defect (flat layout)")
    right.code(FLAT_LAYOUT, language=None)
    st.caption("PNG, JPEG, BMP or TIFF; grayscale or colour. Masks are optional (they add "
               "pixel-level scores), and so are defect images: a model learns from good "
               "images alone.")


def _run_import(project: str, create: bool, zip_file: Any = None,
                folder: str | None = None) -> None:
    """Submit the import job; the panel below follows it."""
    try:
        st.session_state[IMPORT_JOB] = start_import_job(
            context(), project, zip_file=zip_file, folder=folder, create=create)
    except (ImportRefused, ValueError, LookupError, OSError, RuntimeError) as exc:
        # OSError: the upload could not be saved (disk full, no permission): a message too.
        st.error(f"Nothing was imported: {plain(exc)}")
        return
    st.rerun()  # draw the job's panel (and follow it) at once


def _import_panel() -> None:
    """Stage and progress of the running import, redrawn every second from its job row."""
    job_id = st.session_state.get(IMPORT_JOB)
    if job_id is None:
        return
    try:
        job = get_job(context(), job_id)
    except LookupError:
        del st.session_state[IMPORT_JOB]
        return
    if job["status"] == "done":
        del st.session_state[IMPORT_JOB]
        st.session_state[LAST_IMPORT] = job["result"]
        st.session_state[GALLERY_PAGE_KEY] = 1
        open_project(job["result"]["project"], DATASETS_PAGE)
        return
    if job["status"] in ("failed", "cancelled"):
        what = "cancelled" if job["status"] == "cancelled" else job["error"]
        st.error(f"Nothing was imported: {plain(what)}")
        if st.button("Dismiss", key="dismiss-import-job"):
            del st.session_state[IMPORT_JOB]
            st.rerun()
        return
    with st.container(border=True):
        stage = job["stage"] or "waiting for the worker"
        st.progress(min(max(float(job["progress"]), 0.0), 1.0),
                    text=f"Importing {plain(job['payload'].get('name', ''))}: {plain(stage)} · "
                         f"{job['progress']:.0%}")
        if st.button("Cancel import", key="cancel-import", icon=":material/stop:"):
            cancel_job(context(), job_id)


def import_progress() -> None:
    """The import job's panel; polls while a job runs (a reload keeps following it)."""
    running = st.session_state.get(IMPORT_JOB) is not None
    st.fragment(_import_panel, run_every=1.0 if running else None)()


def import_forms(project: str | None, create: bool) -> None:
    """Two tabs: upload a zip, or name a folder on the server. ``create`` asks for a name."""
    import_progress()
    zip_tab, folder_tab = st.tabs(["Upload a zip file", "Folder on this server"])
    with zip_tab, st.form("zip-import", border=False):
        new_name = st.text_input("Project name", key="zip-name") if create else project
        upload = st.file_uploader("Zip file with the images", type=["zip"])
        if st.form_submit_button("Import zip", type="primary"):
            if not new_name or not new_name.strip():
                st.error("Give the project a name first.")
            elif upload is None:
                st.error("Choose a zip file first.")
            else:
                _run_import(new_name, create, zip_file=upload)
    with folder_tab, st.form("folder-import", border=False):
        new_name = st.text_input("Project name", key="folder-name") if create else project
        folder = st.text_input(
            "Folder path", placeholder="/data/line3/camera1",
            help="A folder on the computer that runs Kensa, inside one of the import "
                 f"folders ({plain(', '.join(str(r) for r in import_roots(context())))}; the "
                 f"administrator sets them with {IMPORT_ROOTS_ENV}). Its images are copied "
                 "into Kensa's data folder; the original is never changed.",
        )
        if st.form_submit_button("Import folder", type="primary"):
            if not new_name or not new_name.strip():
                st.error("Give the project a name first.")
            else:
                _run_import(new_name, create, folder=folder)
    layout_help()


def new_project_form() -> None:
    """Everything the New project page shows (also the Datasets page before any project)."""
    st.title("New project")
    st.markdown(
        "A project is the images of **one part or product seen by one camera**. Give it a "
        "name and bring the images as a zip file or a folder."
    )
    import_forms(None, create=True)

"""The progress panel of one background job, as the pages show it (widgets only).

A page polls its job inside an ``st.fragment``; while the job is queued or running this draws
the stage, the percent and a Cancel button, and once it has ended it says how (failed or
cancelled). A job that finished since the page was drawn reruns the page, so the page can draw
its result; drawing a finished job's result is the caller's.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from services.context import Kensa
from services.jobs.api import cancel as cancel_job
from ui.common import plain

ACTIVE_JOB = ("queued", "running")


def job_panel(ctx: Kensa, job: dict[str, Any] | None, *, title: str, noun: str, stops: str,
              key: str, was_running: bool) -> None:
    """``title`` heads the progress bar ("Export"), ``noun`` names the job in sentences
    ("the export"), ``stops`` says what a Cancel stops ("the export"); ``was_running``:
    whether the job was active when the page was drawn."""
    if job is None:
        return
    if job["status"] in ACTIVE_JOB:
        stage = job["stage"] or "waiting for a worker"
        st.progress(min(max(float(job["progress"]), 0.0), 1.0),
                    text=f"{title}: {plain(stage)} · {job['progress']:.0%}")
        if job["cancel_requested"]:
            st.caption(f"Cancel requested: {stops} stops after the current step.")
        elif st.button(f"Cancel {noun}", key=f"{key}_cancel_{job['id']}",
                       icon=":material/stop:"):
            cancel_job(ctx, job["id"])
            st.rerun(scope="fragment")
    elif was_running:  # it ended since the page was drawn: the page draws the result
        st.rerun()
    elif job["status"] == "failed":
        st.error(f"The last {noun.removeprefix('the ')} failed: "
                 f"{plain(job['error'] or 'no reason given')}")
    elif job["status"] == "cancelled":
        st.caption(f"The last {noun.removeprefix('the ')} was cancelled.")

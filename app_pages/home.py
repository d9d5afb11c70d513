"""Home: one status card per project, so the state of every line is visible at a glance."""

from __future__ import annotations

import streamlit as st

from services.data.demo import ATTRIBUTION, DEMO_NAME
from services.data.projects import list_projects, project_status
from services.wording import GLOSSARY
from ui.common import (
    DATASETS_PAGE,
    EVALUATION_PAGE,
    TRAINING_PAGE,
    context,
    fmt,
    open_project,
    plain,
)

ctx = context()
st.title("Kensa")
st.markdown(
    "Find defects on parts from a **handful of good images**: import a data set, train a "
    "detector in a minute on this computer, check how well it separates good from defective "
    "parts, and set the decision threshold."
)

projects = list_projects(ctx)
if not projects:
    st.info("There is no project yet. Start by importing a folder or a zip file of images.")
    st.page_link(DATASETS_PAGE, label="Create your first project", icon=":material/add:")
    st.stop()

for project in projects:
    status = project_status(ctx, project["name"])
    images = status["images"]
    per_label = images["per_label"]
    model = status["active_model_version"]
    threshold = status["active_threshold"]
    last = status["last_batch"]
    with st.container(border=True):
        head, actions = st.columns([3, 2], vertical_alignment="center")
        head.subheader(plain(project["name"]), anchor=False)
        buttons = actions.columns(3)
        for col, (label, page) in zip(
            buttons,
            (("Data", DATASETS_PAGE), ("Train", TRAINING_PAGE), ("Evaluate", EVALUATION_PAGE)),
            strict=True,
        ):
            if col.button(label, key=f"open-{page}-{project['id']}", width="stretch"):
                open_project(project["name"], page)

        c1, c2, c3, c4, c5 = st.columns(5)
        c1.metric("Good images", per_label.get("good", 0))
        c2.metric("Defect images", per_label.get("defect", 0),
                  help=", ".join(f"{plain(k)}: {v}" for k, v in images["per_defect_type"].items())
                  or None)
        if model is None:
            c3.metric("Model in use", "none yet")
            c4.metric("Good vs defect (AUROC)", "—")
        else:
            c3.metric("Model in use", model["label"],
                      help=f"Numbered within this project. Details: {model['backbone']}, "
                           f"id {model['id']}. {GLOSSARY['Bank']}")
            c4.metric("Good vs defect (AUROC)",
                      "—" if model["separation"] is None else f"{model['separation']:.2f}",
                      help="How well the model separates good from defect parts on images it did "
                           f"not learn from (image AUROC): {GLOSSARY['AUROC']}")
        c5.metric("Threshold", fmt(threshold["raw_value"], 4) if threshold else "—",
                  help=f"Chosen: {threshold['method_words']}" if threshold else None)

        notes = []
        for run in status["training"]:
            notes.append(f"Training {run['label']} is {run['status']}: "
                         f"{run['stage'] or 'waiting'} ({run['progress']:.0%}).")
        failed = status.get("last_failed_training")
        if failed is not None:
            st.error(f"The last training ({failed['label']}) failed: {plain(failed['error'])}")
        if last is not None:
            n = last["predictions"]
            # a validation batch's name (validation-m<id>) means nothing to a user
            what = (f"Check at training: {n} held-out images scored"
                    if last["source"] == "validation"
                    else f"Last batch: **{plain(last['name'])}** — {n} images")
            notes.append(f"{what}: {last['defect']} called defect, {last['good']} good "
                         f"({last['started_at']:%Y-%m-%d %H:%M} UTC).")
        if status["problems"]:
            notes.append(f"{status['problems']} file problem(s) found on import — see Datasets.")
        if model is None and images["total"] and not status["training"]:
            notes.append("Next step: train a model on the Training page.")
        if images["total"] == 0:
            notes.append("Next step: add images on the Datasets page.")
        for note in notes:
            st.markdown(note)
        if project["name"] == DEMO_NAME:
            st.caption(ATTRIBUTION)

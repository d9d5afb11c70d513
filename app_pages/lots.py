"""Production lots: score a folder or a zip as a named lot, review the verdicts, export them.

Widgets only: scoring is a ``score_batch`` job (services.inference.lots.start_lot) that this
page follows from its row; the table, the counts, the reviews and the CSV come from
services.inference.lots.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from services.data.imports import IMPORT_ROOTS_ENV, import_roots, project_slug
from services.inference.lots import (
    list_lots,
    lot_csv,
    lot_model,
    lot_results,
    review_many,
    start_lot,
    thumbnail_url,
    when,
)
from services.jobs.api import cancel as cancel_job
from services.jobs.api import get_job, list_jobs
from ui.common import TRAINING_PAGE, context, need_project, plain, with_project

LOT_JOB = "_lot_job"  # the job this session submitted: its result is shown when it ends
LAST_LOT = "_lot_last"  # that result
CHOSEN_LOT = "_lot_chosen"  # the lot whose results are shown
REVIEWER = "_lot_reviewer"  # "Your name", kept across pages (a widget's own key is not)
PAGE_SIZE = 100
VERDICT_WORDS = {"good": "Good", "defect": "Defect", "review": "Unsure"}
VERDICT_COLOURS = {"good": "#d8f0dd", "defect": "#f9d6d5", "review": "#fcefc7"}
REVIEW_FILTERS = {"all": "All", "open": "Not reviewed", "reviewed": "Reviewed",
                  "overruled": "Overruled"}

ctx = context()
name = need_project()
if name is None:
    st.stop()

st.title(f"Production lots · {plain(name)}")
model = lot_model(ctx, name)
if model is None:
    st.warning("This project has no trained model yet. A lot is inspected by the project's "
               "model, so train one first.")
    st.page_link(TRAINING_PAGE, label="Train a model on the Training page",
                 icon=":material/model_training:", query_params=with_project(name))
    st.stop()
st.caption(
    f"Score a lot of new parts: every image gets a verdict from {model['label']} "
    f"(threshold {model['threshold']:.4f}). Scoring a lot again "
    "under the same name only scores the images it has not seen yet."
)


# --------------------------------------------------------------------------- score a lot
def _submit(lot: str, *, folder: str | None = None, upload: Any = None) -> None:
    if not lot.strip():
        st.error("Give the lot a name first (for example the lot or order number).")
        return
    if folder is not None and not folder.strip():
        st.error("Type the path of the folder first.")
        return
    if folder is None and upload is None:
        st.error("Choose a zip file first.")
        return
    try:
        st.session_state[LOT_JOB] = start_lot(ctx, name, lot, folder=folder, zip_file=upload)
    except (ValueError, LookupError, OSError, RuntimeError) as exc:
        st.error(f"Nothing was scored: {plain(exc)}")
        return
    st.session_state.pop(LAST_LOT, None)
    st.rerun()


with st.expander("Score a lot", expanded=not list_lots(ctx, name), icon=":material/add:"):
    folder_tab, zip_tab = st.tabs(["Folder on this server", "Upload a zip file"])
    with folder_tab, st.form("lot-folder", border=False):
        lot = st.text_input("Lot name", key="lot-folder-name", placeholder="e.g. 2026-11-27 line 3")
        folder = st.text_input(
            "Folder with the images", placeholder="/data/line3/today",
            help="A folder on the computer that runs Kensa, inside one of the import folders "
                 f"({plain(', '.join(str(r) for r in import_roots(ctx)))}; the administrator "
                 f"sets them with {IMPORT_ROOTS_ENV}). Every image in it and in its subfolders "
                 "is scored; nothing is copied or changed.",
        )
        if st.form_submit_button("Score", type="primary", icon=":material/play_arrow:"):
            _submit(lot, folder=folder)
    with zip_tab, st.form("lot-zip", border=False):
        lot = st.text_input("Lot name", key="lot-zip-name", placeholder="e.g. 2026-11-27 line 3")
        upload = st.file_uploader("Zip file with the images", type=["zip"], key="lot-zip-file")
        if st.form_submit_button("Score", type="primary", icon=":material/play_arrow:"):
            _submit(lot, upload=upload)
    st.caption("Any folders inside are fine; PNG, JPEG, BMP or TIFF. Files that are not images "
               "are listed and skipped.")


def _summary(result: dict[str, Any]) -> None:
    """What the finished job did, in words: new, already scored, refused, unreadable."""
    new, old = result["scored"], result["skipped"]
    text = (f"Lot “{plain(result['name'])}”: {new} new image{'s' * (new != 1)} scored, "
            f"{old} already scored.")
    st.success(text, icon=":material/task_alt:")
    refused = result.get("rejected", [])
    problems = result.get("problems", [])
    if refused or problems:
        count = result.get("rejected_count", len(refused)) + len(problems)
        with st.expander(f"{count} file{'s' * (count != 1)} could not be scored"):
            st.dataframe(
                pd.DataFrame([{"file": r["name"], "why": r["reason"]} for r in refused]
                             + [{"file": p["path"].rsplit("/", 1)[-1], "why": p["problem"]}
                                for p in problems]),
                hide_index=True, width="stretch")


def _jobs_panel() -> None:
    """Every running lot job of the project (a reload keeps them), redrawn every second."""
    mine = st.session_state.get(LOT_JOB)
    if mine is not None:
        try:
            job = get_job(ctx, mine)
        except LookupError:
            job = None
        if job is None or job["status"] not in ("queued", "running"):
            del st.session_state[LOT_JOB]
            if job is not None and job["status"] == "done":
                st.session_state[LAST_LOT] = job["result"]
                st.session_state[CHOSEN_LOT] = job["result"]["name"]
            elif job is not None:
                what = "it was cancelled" if job["status"] == "cancelled" else job["error"]
                st.session_state[LAST_LOT] = {"error": what,
                                              "name": job["payload"].get("batch", "")}
            st.rerun()  # redraw the whole page: the lots list and the table changed
    for job in list_jobs(ctx, name, kinds=["score_batch"], active=True):
        with st.container(border=True):
            stage = job["stage"] or "waiting for the worker"
            st.progress(min(max(float(job["progress"]), 0.0), 1.0),
                        text=f"Scoring lot “{plain(job['payload'].get('batch', ''))}”: "
                             f"{plain(stage)} · {job['progress']:.0%}")
            if job["cancel_requested"]:
                st.caption("Cancel requested: the worker stops after the current image. "
                           "Images scored so far are kept; scoring the lot again resumes it.")
            elif st.button("Cancel", key=f"cancel-lot-{job['id']}", icon=":material/stop:"):
                cancel_job(ctx, job["id"])
                st.rerun(scope="fragment")


running = bool(st.session_state.get(LOT_JOB)) or bool(
    list_jobs(ctx, name, kinds=["score_batch"], active=True))
st.fragment(_jobs_panel, run_every=1.0 if running else None)()
last = st.session_state.get(LAST_LOT)
if last is not None:
    if "error" in last:
        st.error(f"Lot “{plain(last['name'])}” was not scored: {plain(last['error'])}")
    else:
        _summary(last)

# --------------------------------------------------------------------------- lots
lots = list_lots(ctx, name)
if not lots:
    st.info("No lot scored yet. Open **Score a lot** above, name the lot and choose its "
            "images.")
    st.stop()

st.subheader("Lots", anchor=False)
st.dataframe(
    pd.DataFrame([{
        "lot": lot["name"], "from": lot["source"], "images": lot["scored"],
        "defects": lot["defects"], "unsure": lot["unsure"], "reviewed": lot["reviewed"],
        "overruled": lot["overruled"], "model": lot["model"], "threshold": lot["threshold"],
        "last scored": lot["last_scored"],
    } for lot in lots]),
    hide_index=True, width="stretch",
    column_config={
        "last scored": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        "unsure": st.column_config.NumberColumn(
            help="Between the sure-good and sure-bad scores: a person should look."),
        "overruled": st.column_config.NumberColumn(
            help="Images where a person decided against the model's verdict."),
    },
)

names = [lot["name"] for lot in lots]
if st.session_state.get(CHOSEN_LOT) not in names:
    st.session_state[CHOSEN_LOT] = names[0]
chosen = st.selectbox("Results of lot", names, key=CHOSEN_LOT)
info = lots[names.index(chosen)]

# --------------------------------------------------------------------------- filters
left, middle, right = st.columns([2, 2, 3])
present = [v for v, n in (("good", info["good"]), ("defect", info["defects"]),
                          ("review", info["unsure"])) if n]  # offer only what the lot holds
verdicts = left.multiselect("Verdict", present, default=present,
                            format_func=VERDICT_WORDS.__getitem__, key=f"lot-verdicts-{chosen}")
status = middle.radio("Review", list(REVIEW_FILTERS), format_func=REVIEW_FILTERS.__getitem__,
                      horizontal=True, key="lot-review-filter")
low, high = right.slider(
    "Score", 0.0, 1.0, (0.0, 1.0), step=0.01, key="lot-score-range",
    help="0.5 is the threshold the model was checked with: above it, parts look defective.")
filters: dict[str, Any] = {
    "verdict": verdicts,
    "reviewed": {"open": False, "reviewed": True}.get(status),
    "overruled": True if status == "overruled" else None,
    "score_min": low if low > 0 else None,
    "score_max": high if high < 1 else None,
}
rows = lot_results(ctx, name, chosen, **filters)
st.caption(f"{len(rows)} of {info['scored']} images shown · {info['defects']} defect"
           f"{'s' * (info['defects'] != 1)}, {info['reviewed']} reviewed, "
           f"{info['overruled']} overruled")

page_rows = rows
if len(rows) > PAGE_SIZE:
    pages = (len(rows) + PAGE_SIZE - 1) // PAGE_SIZE
    number = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key="lot-page"))
    page_rows = rows[(number - 1) * PAGE_SIZE:number * PAGE_SIZE]


def _colour(value: object) -> str:
    for word, verdict in VERDICT_WORDS.items():
        if value == verdict:
            return f"background-color: {VERDICT_COLOURS[word]}"
    return ""


table = pd.DataFrame([{
    "image": thumbnail_url(ctx, r["image_path"]),
    "file": r["file"], "folder": r["folder"],
    "verdict": VERDICT_WORDS.get(r["verdict"], r["verdict"]),
    "score": r["normalized_score"], "confidence": r["confidence"],
    "review": VERDICT_WORDS.get(r["reviewed_verdict"] or "", ""),
    "by": r["reviewed_by"] or "", "when": when(r["reviewed_at"]),
    "raw score": r["raw_score"],
} for r in page_rows], columns=["image", "file", "folder", "verdict", "score", "confidence",
                                "review", "by", "when", "raw score"])
event = st.dataframe(
    table.style.map(_colour, subset=["verdict", "review"]),
    hide_index=True, width="stretch", row_height=64, height=min(len(table), 12) * 64 + 40,
    on_select="rerun", selection_mode="multi-row", key=f"lot-table-{chosen}",
    column_config={
        "image": st.column_config.ImageColumn("image", width="small"),
        "file": st.column_config.TextColumn(width="medium"),
        "verdict": st.column_config.TextColumn(help="The model's verdict."),
        "score": st.column_config.ProgressColumn(
            "score", min_value=0.0, max_value=1.0, format="%.2f",
            help="0.5 is the threshold the model was checked with."),
        "confidence": st.column_config.NumberColumn(format="%.2f"),
        "review": st.column_config.TextColumn(help="What a person decided."),
        "raw score": st.column_config.NumberColumn(format="%.4f"),
    },
)

# --------------------------------------------------------------------------- review


def _signed_in_name() -> str | None:
    """The logged-in user's name when the app runs behind ``st.login`` (README)."""
    try:
        user = st.user
        if user.is_logged_in:
            return str(user.get("name") or user.get("email") or "") or None
    except (AttributeError, KeyError, RuntimeError):
        return None
    return None


def _keep_name() -> None:
    st.session_state[REVIEWER] = st.session_state["lot-reviewer"]


st.subheader("Review", anchor=False)
selected = [page_rows[i] for i in event.selection.rows if i < len(page_rows)]
reviewer = _signed_in_name()
who, buttons = st.columns([1, 3])
if reviewer is None:
    reviewer = who.text_input("Your name", value=st.session_state.get(REVIEWER, ""),
                              key="lot-reviewer", on_change=_keep_name,
                              help="Stored with every review, so a decision can be traced.")
else:
    who.markdown(f"Reviewing as **{plain(reviewer)}**")
if not selected:
    buttons.caption("Tick rows in the table (the boxes at its left), then confirm the "
                     "model's verdict or overrule it.")
elif not reviewer.strip():
    buttons.caption("Type your name first: every review says who made it.")
else:
    buttons.caption(f"{len(selected)} image{'s' * (len(selected) != 1)} selected.")
actions = {"confirm": ("Confirm", ":material/check:"),
           "overrule": ("Overrule", ":material/swap_horiz:"),
           "good": ("Mark good", None), "defect": ("Mark defect", None),
           "clear": ("Clear review", ":material/undo:")}
cols = buttons.columns(len(actions))
disabled = not selected or not reviewer.strip()
for col, (action, (label, icon)) in zip(cols, actions.items(), strict=True):
    if col.button(label, key=f"lot-{action}", icon=icon, disabled=disabled, width="stretch",
                  help={"confirm": "The model was right.",
                        "overrule": "The model was wrong: good becomes defect and back.",
                        "good": "For unsure images: the part is good.",
                        "defect": "For unsure images: the part is defective.",
                        "clear": "Remove the review."}[action]):
        try:
            done, skipped = review_many(ctx, name, chosen, selected, action, reviewer)
        except (ValueError, LookupError) as exc:
            st.error(f"Not reviewed: {plain(exc)}")
        else:
            st.toast(f"{done} image{'s' * (done != 1)} reviewed by {reviewer.strip()}")
            if skipped:
                st.session_state["_lot_skipped"] = skipped
            st.rerun()
skipped_files = st.session_state.pop("_lot_skipped", None)
if skipped_files:
    st.warning(f"The model was unsure about {len(skipped_files)} of the selected images "
               f"({plain(', '.join(skipped_files[:5]))}{'…' * (len(skipped_files) > 5)}): "
               "mark them good or defect instead.")

st.download_button(
    "Download the lot as CSV", lot_csv(ctx, name, chosen),
    file_name=f"{project_slug(name)}-{project_slug(chosen)}.csv", mime="text/csv",
    icon=":material/download:",
    help="Every image of the lot with its verdict, scores, confidence and review.",
)
st.caption("Score: 0 to 1, where 0.5 is the threshold. Confidence: how sure the model is of "
           "its verdict (0.5 = a coin toss, 1 = certain).")

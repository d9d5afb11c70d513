"""Explainability: why the model called one image good or defect.

Widgets and plots only: the explanation (score, regions, nearest normal patches, words), the
overlay, the report and the bank update all come from services.inference.explain. The chosen
image is the URL's ``?image=`` (its sha256), so a link opens the same image, as ``?project=``
does for the project.

The explanation is one image through the model, computed in the script thread and cached per
data directory, project, image and model state (bank version and threshold), so moving a
slider only redraws the overlay; a bank update or a new threshold changes the key, so a stale
verdict is never shown.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from services.data.imports import project_slug
from services.inference.batches import get_active_model
from services.inference.explain import (
    Explanation,
    colour_scale_legend,
    explain_image,
    explainable_images,
    feature_view,
    mark_normal,
    overlay_png,
    report_html,
)
from services.jobs.api import get_job
from ui.common import (
    DRIFT_PAGE,
    TRAINING_PAGE,
    context,
    current_project,
    fmt,
    need_project,
    plain,
    with_project,
)

IMAGE_PARAM = "image"  # the URL's query parameter: the chosen image's sha256
PICK_KEY = "xp_image"  # the picker's widget key; its value mirrors the URL
FROM_KEY = "xp_from"  # project image or upload
JOB_KEY = "_xp_job"  # (image sha256, job id) of the bank update this session started
DONE_KEY = "_xp_done"  # how it ended: (image sha256, the job's row), shown with that image
ASK_KEY = "_xp_ask"  # the image whose "this is normal" confirmation is open
BY_KEY = "_xp_by"  # the name typed in the confirmation, kept for the next one
COLORMAPS = {"jet": "Jet (blue to red)", "turbo": "Turbo (blue to red)",
             "inferno": "Inferno (black to yellow)", "viridis": "Viridis (purple to yellow)"}
VERDICT = {"defect": ("Defect", "red", ":material/report:"),
           "good": ("Good", "green", ":material/check_circle:")}
KIND_WORDS = {"spot": "spot", "line": "line (scratch or crack)", "area": "area (stain or wear)"}


def num(value: float) -> str:
    """A score as people read it: three significant digits (61.2, 0.0421), no exponent."""
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"


@st.cache_data(show_spinner=False, max_entries=32, ttl=3600)
def _explain(home: str, project: str, key: str | None, state: tuple[int, int],
             upload: bytes | None, upload_name: str | None) -> Explanation:
    """One explanation per (data directory, project, image, bank version, threshold).

    ``home`` and ``state`` are only part of the key: tests and a bank update must never see
    an explanation made with another data directory or another model state.
    """
    del home, state
    if upload is not None:
        return explain_image(context(), project, upload=upload, upload_name=upload_name)
    return explain_image(context(), project, sha256=key)


@st.cache_data(show_spinner=False, max_entries=8, ttl=3600)
def _features(home: str, project: str, key: str, state: tuple[int, int],
              _e: Explanation) -> list[tuple[str, np.ndarray]]:
    """The backbone's feature maps of the same explanation (computed only when asked)."""
    del home, state
    return feature_view(context(), project, _e)


def _maybe(value: float) -> str:
    """A measure that may not exist (NaN: no held-out images, no neighbours) as a dash."""
    return fmt(None if math.isnan(value) else value)


def _option(image: dict[str, str]) -> str:
    """A picker entry: where the image comes from, then its name (lots after the dataset)."""
    if image["source"] == "dataset":
        return f"Dataset · {image['label']}"
    return f"Lot {image['source']} · {image['label']}"


def _view_words(view: str) -> str:
    """``rot90+flip`` as people say it: the training image was matched turned or mirrored."""
    turn = re.search(r"rot(\d+)", view)
    degrees = int(turn.group(1)) if turn else 0
    words = [f"turned {degrees}°"] if degrees else []
    if "flip" in view:
        words.append("mirrored")
    return " and ".join(words) if words else "as photographed"


def _picked() -> None:
    """The picker changed: the URL follows, so a reload or a copied link keeps the image."""
    if st.session_state.get(PICK_KEY):
        st.query_params[IMAGE_PARAM] = st.session_state[PICK_KEY]


def _choose(images: list[dict[str, str]]) -> tuple[str | None, Any]:
    """The image to explain: (sha256 of a project image, None) or (None, an upload).

    The URL decides which project image is shown, like the project picker does; a sha256
    that matches no image (an old link) is said in words and the first image is shown.
    """
    by_key = {i["key"]: i for i in images}
    options = st.radio("Image", ["project", "upload"], horizontal=True, key=FROM_KEY,
                       format_func={"project": "One of this project's images",
                                    "upload": "Upload an image"}.get,
                       index=0 if images else 1, label_visibility="collapsed")
    if options == "upload":
        st.query_params.pop(IMAGE_PARAM, None)  # the link cannot carry an upload
        upload = st.file_uploader(
            "Image to explain", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"],
            key="xp_upload",
            help="It is scored by the project's model like a part on the line; it is not "
                 "added to the project.")
        if upload is None:
            st.caption("Choose a PNG, JPEG, BMP or TIFF image of the part.")
        return None, upload
    wanted = st.query_params.get(IMAGE_PARAM)
    if wanted in by_key:
        st.session_state[PICK_KEY] = wanted
    else:
        if wanted:
            st.warning("The image named in the link is no longer in this project (it may have "
                       "been removed). Showing another image instead.",
                       icon=":material/search_off:")
        if st.session_state.get(PICK_KEY) not in by_key:
            st.session_state[PICK_KEY] = images[0]["key"]
        st.query_params[IMAGE_PARAM] = st.session_state[PICK_KEY]
    chosen = st.selectbox(
        "Image", list(by_key), key=PICK_KEY, on_change=_picked,
        format_func=lambda k: _option(by_key[k]),
        help="The project's dataset images, then those of the scored production lots. "
             "Type to search by name.")
    return chosen, None


def _legend(e: Explanation, colormap: str) -> None:
    """The colour scale with its anchors, so a colour reads as evidence, not decoration.

    The service colours every map on one fixed scale (left = a typical good part, the middle =
    the threshold, right = twice as far), so the same colour means the same in every image.
    """
    st.image(colour_scale_legend(colormap), width=480)
    st.caption(f"The colours use one scale for every image: the middle of the bar is the "
               f"threshold ({num(e.threshold)}), so anything coloured past it is farther from "
               "the good parts than the model accepts. White outlines and numbered boxes mark "
               "the regions listed below.")


@st.fragment
def _overlay_panel(e: Explanation, stem: str) -> None:
    """The heatmap and its controls; a slider move reruns only this part (no new scoring)."""
    c1, c2, c3, c4 = st.columns([3, 2, 1, 1], vertical_alignment="bottom")
    alpha = c1.slider("Heatmap strength", 0.0, 1.0, 0.5, 0.05, key="xp_alpha",
                      help="0 shows the image alone, 1 the heatmap alone.")
    colormap = c2.selectbox("Colours", list(COLORMAPS), key="xp_cmap",
                            format_func=COLORMAPS.get)
    contours = c3.toggle("Outlines", value=True, key="xp_contours",
                         help="White lines around the regions above the threshold.")
    boxes = c4.toggle("Boxes", value=True, key="xp_boxes",
                      help="Numbered boxes, the same numbers as in the regions table.")
    png = overlay_png(e, alpha=alpha, colormap=colormap, contours=contours, boxes=boxes)
    left, right = st.columns(2)
    left.image(e.image, caption="The image", width="stretch")
    right.image(png, caption="Where the model sees something unusual", width="stretch")
    _legend(e, colormap)
    st.download_button("Download this picture (PNG)", png, file_name=f"{stem}-heatmap.png",
                       mime="image/png", icon=":material/download:", key="xp_dl_png")


def _regions(e: Explanation) -> None:
    """The regions table and, per region, its patch beside the closest good patches."""
    st.subheader("Regions", anchor=False)
    if not e.regions:
        st.caption("No region is above the threshold: no part of the image is farther from "
                   "the good parts than the model accepts.")
        return
    st.dataframe(
        pd.DataFrame([{
            "#": r.index, "kind": KIND_WORDS.get(r.kind, r.kind),
            "box": f"x {r.box[0]}–{r.box[2]}, y {r.box[1]}–{r.box[3]}",
            "area px": r.area_px, "area %": r.area_pct, "peak": r.peak, "mean": r.mean,
        } for r in e.regions]),
        hide_index=True, width="stretch",
        column_config={
            "#": st.column_config.NumberColumn(width="small",
                                               help="The number on the box in the picture."),
            "kind": st.column_config.TextColumn(
                help="A guess from the region's shape: long and thin is a line, small and "
                     "round a spot, anything larger an area."),
            "box": st.column_config.TextColumn(help="Pixels, from the top-left corner."),
            "area %": st.column_config.NumberColumn(format="%.2f %%",
                                                    help="Share of the image."),
            "peak": st.column_config.NumberColumn(
                format="%.3g", help="The highest score inside the region."),
            "mean": st.column_config.NumberColumn(
                format="%.3g", help="The average score inside the region."),
        },
    )
    st.subheader("Closest good patches", anchor=False)
    st.caption("For the most unusual spot of each region: the patch of this image (left) and "
               "the patches of the good training images the model found closest to it. "
               "The larger the distance, the less it looks like anything good the model saw.")
    for r in e.regions:
        cols = st.columns(1 + max(len(r.nearest), 1))
        cols[0].image(r.query_crop, width="stretch",
                      caption=f"Region {r.index} of this image · {r.kind}")
        if not r.nearest:
            cols[1].caption("This model keeps no good patches to compare with.")
        for col, n in zip(cols[1:], r.nearest, strict=False):
            where = f"{_view_words(n.view)}, patch at row {n.row}, column {n.col}"
            if n.crop.size == 0:
                col.caption(plain(f"{n.file_name}: no longer on disk · {where} · "
                                  f"distance {num(n.distance)}"))
            else:
                col.image(n.crop, width="stretch",
                          caption=plain(f"{n.file_name} · {where} · distance {num(n.distance)}"))


def _plain_refusal(message: str) -> str:
    """A refusal without its opening count, which the page has said already."""
    return re.sub(r"^bank not updated, \d+ image\(s\) refused: ", "", message)


def _close_dialog() -> None:
    st.session_state.pop(ASK_KEY, None)


@st.dialog("Teach the model that this part is good", width="medium", on_dismiss=_close_dialog)
def _confirm(e: Explanation) -> None:
    """The one step that changes the model: said in words before it happens.

    Open while ``ASK_KEY`` names this image (not only on the click's run), so the dialog
    survives the reruns its own widgets cause; closing it clears the key.
    """
    st.markdown(
        "The model called this image a defect. If a person has checked the part and it is "
        "good, Kensa can add it to what the model knows as good, so parts like it pass from "
        "now on.")
    st.markdown(
        "- This makes a **new version** of the model's memory of good parts, and the "
        "threshold is checked again on the held-out images.\n"
        "- The version in use now is kept: you can **roll back** to it at any time on the "
        "Drift monitor page (**Roll back to …**).\n"
        "- Only do this for parts that are really good: a defect taught as good is missed "
        "from then on.")
    by = st.text_input("Your name", value=st.session_state.get(BY_KEY, ""), key="xp_by_input",
                       help="Stored with the new version, so the change can be traced.")
    yes, no = st.columns(2)
    if yes.button("Yes, this part is good", type="primary", icon=":material/check:",
                  width="stretch"):
        st.session_state[BY_KEY] = by.strip()
        try:
            job = mark_normal(context(), e.project, e, by=by.strip() or None)
        except (ValueError, LookupError, OSError, RuntimeError) as exc:
            st.error(f"Nothing was changed: {plain(_plain_refusal(str(exc)))}")
            return
        _close_dialog()
        st.session_state[JOB_KEY] = (e.sha256, job)
        st.session_state.pop(DONE_KEY, None)
        st.rerun()
    if no.button("Cancel", width="stretch"):
        _close_dialog()
        st.rerun()


def _ask(sha256: str) -> None:
    st.session_state[ASK_KEY] = sha256


def _job_panel() -> None:
    """The bank update this session started, redrawn every second until it ends; then the
    whole page reruns (the model changed, so the verdict is explained again)."""
    if JOB_KEY not in st.session_state:
        return
    sha256, job_id = st.session_state[JOB_KEY]
    try:
        job = get_job(context(), job_id)
    except LookupError:
        job = None
    if job is not None and job["status"] in ("queued", "running"):
        stage = job["stage"] or "waiting for the worker"
        st.progress(min(max(float(job["progress"]), 0.0), 1.0),
                    text=f"Teaching the model: {plain(stage)} · {job['progress']:.0%}")
        return
    del st.session_state[JOB_KEY]
    st.session_state[DONE_KEY] = (sha256, job or {"status": "failed",
                                                  "error": "the job is gone"})
    st.rerun()


def _job_result(e: Explanation) -> None:
    """How the last bank update ended, in words, while its image is shown."""
    done = st.session_state.get(DONE_KEY)
    if done is None or done[0] != e.sha256:
        st.session_state.pop(DONE_KEY, None)
        return
    job = done[1]
    if job["status"] == "done":
        st.success("Done: the model now counts this part as good. The verdict below is from the "
                   "updated model; the previous version is kept and can be rolled back.",
                   icon=":material/task_alt:")
        st.page_link(DRIFT_PAGE, label="Versions of the model, and roll back: Drift monitor",
                     icon=":material/undo:", query_params=with_project(current_project()))
    elif job["status"] == "cancelled":
        st.warning("The update was cancelled: the model was not changed.")
    else:
        # an upload is kept under its fingerprint: name it as the person knows it
        why = re.sub(re.escape(e.sha256) + r"(\.\w+)?", e.image_name,
                     _plain_refusal(job.get("error") or "no reason was given"))
        st.error(f"The model was not changed: {plain(why)}", icon=":material/block:")


# --------------------------------------------------------------------------- page
ctx = context()
name = need_project()
if name is None:
    st.stop()
st.title(f"Explainability · {plain(name)}")
st.caption("Why the model called an image good or defect: where it looked, how sure it is, "
           "and which good parts it compared the image with.")

try:
    active = get_active_model(ctx, name)
except LookupError:
    st.info("This project has no trained model yet, so there is no verdict to explain. "
            "Train one first: it takes about a minute for a few dozen images.")
    st.page_link(TRAINING_PAGE, label="Go to Training", icon=":material/model_training:",
                 query_params=with_project(name))
    st.stop()

images = explainable_images(ctx, name)
key, upload = _choose(images)
# the dataset's own label beside the verdict: a first-time user sees at once whether the
# model agrees (a good image called defect is a false alarm, a defect called good a miss)
truth = next((i["truth"] for i in images if i["key"] == key), "") if key else ""
if key is None and upload is None:
    st.stop()
try:
    with st.spinner("Looking at the image…"):
        e = _explain(str(ctx.home), name, key, (active.bank_version_id, active.threshold_id),
                     upload.getvalue() if upload is not None else None,
                     upload.name if upload is not None else None)
except (ValueError, LookupError, OSError, RuntimeError) as exc:
    st.error(f"This image cannot be explained: {plain(exc)}")
    st.stop()

stem = project_slug(e.image_name.rsplit(".", 1)[0])
st.fragment(_job_panel, run_every=1.0 if JOB_KEY in st.session_state else None)()
_job_result(e)

# --------------------------------------------------------------------------- verdict
word, colour, icon = VERDICT.get(e.verdict, (e.verdict.title(), "gray", ":material/help:"))
with st.container(border=True):
    st.markdown(f"### :{colour}-background[:{colour}[{icon} {word}]] — score {num(e.score)}, "
                f"threshold {num(e.threshold)}")
    agree = {("good", "defect"): " — the model calls it defect: a false alarm",
             ("defect", "good"): " — the model calls it good: a missed defect"}
    labelled = (f" · labelled {truth} in the dataset{agree.get((truth, e.verdict), '')}"
                if truth else "")
    st.caption(plain(f"{e.image_name} · scored by {e.model_label}{labelled}"))
    st.markdown(plain(e.summary))
    st.markdown("**How sure the model is**\n\n"
                + "\n".join(f"- {plain(w)}" for w in e.confidence_words))
    if e.verdict == "defect":
        st.button("This is normal (false alarm)", icon=":material/thumb_up:",
                  disabled=JOB_KEY in st.session_state, on_click=_ask, args=(e.sha256,),
                  help="A person checked the part and it is good: teach the model (you "
                       "confirm first).")
        if st.session_state.get(ASK_KEY) == e.sha256:
            _confirm(e)

# --------------------------------------------------------------------------- heatmap
st.subheader("Heatmap", anchor=False)
_overlay_panel(e, stem)

# --------------------------------------------------------------------------- regions
_regions(e)

# --------------------------------------------------------------------------- more
with st.expander("What the network sees (feature maps of the backbone stages)"):
    st.caption("Where each stage of the pretrained network responds most within this image "
               "(bright = strong). Each picture has its own scale, so they show where, not "
               "how much; the heatmap above is what the verdict rests on.")
    if st.toggle("Show the feature maps", key="xp_features"):
        with st.spinner("Reading the network's stages…"):
            views = _features(str(ctx.home), name, e.sha256,
                              (active.bank_version_id, active.threshold_id), e)
        cols = st.columns(max(len(views), 1))
        for col, (label, picture) in zip(cols, views, strict=False):
            col.image(picture, caption=plain(label), width="stretch")

with st.expander("Details"):
    st.dataframe(pd.DataFrame([
        {"what": "file", "value": e.image_name},
        {"what": "image fingerprint (sha256)", "value": e.sha256},
        {"what": "model", "value": e.model_label},
        {"what": "score", "value": f"{e.score:.6g}"},
        {"what": "threshold", "value": f"{e.threshold:.6g}"},
        {"what": "score on the 0–1 scale (0.5 = threshold)", "value": f"{e.normalized:.3f}"},
        {"what": "p-value (share of held-out good parts scoring as high)",
         "value": f"{e.p_value:.3f}"},
        {"what": "false-alarm rate at the threshold", "value": _maybe(e.false_alarm_rate)},
        {"what": "nearest-patch spread (std / mean)", "value": _maybe(e.knn_spread)},
    ]), hide_index=True, width="stretch")

st.subheader("Downloads", anchor=False)
d1, d2 = st.columns(2)
d1.download_button("Report (HTML)", lambda: report_html(e), file_name=f"{stem}-report.html",
                   mime="text/html", icon=":material/description:", width="stretch",
                   help="Everything on this page in one file to send or archive.")
d2.download_button("Data (JSON)", lambda: json.dumps(e.as_json(), indent=2),
                   file_name=f"{stem}-explanation.json", mime="application/json",
                   icon=":material/data_object:", width="stretch",
                   help="The numbers of this page, for scripts.")

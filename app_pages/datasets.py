"""Datasets: create a project from images, see what is in it and what is wrong with it."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from services.data.gallery import (
    PREVIEW_SIDE,
    GalleryItem,
    dataset_overview,
    gallery_page,
    image_detail,
    thumbnail,
)
from services.data.imports import rescan
from ui.common import context, current_project, plain, unknown_project
from ui.import_form import GALLERY_PAGE_KEY, LAST_IMPORT, import_forms, new_project_form

PER_PAGE = 24
COLUMNS = 6
PAGE_KEY = GALLERY_PAGE_KEY
ALL = "All"

ctx = context()
name = current_project()
if name is None:  # nothing to show yet: the first project is made here
    if unknown_project() is None:  # else the router already said the name is unknown
        new_project_form()
    st.stop()


def _show_last_import() -> None:
    result = st.session_state.get(LAST_IMPORT)  # an import job's result (a dict)
    if result is None or result["project"] != name:
        return
    with st.container(border=True):
        st.success(
            f"Imported into **{plain(result['project'])}**: {result['imported']} file(s) "
            f"copied, "
            f"{result['unchanged']} already there; {result['added']} new image(s) in the "
            f"project ({result['found']} usable in total)."
        )
        if result["rejected"]:
            st.warning(f"{len(result['rejected'])} file(s) were not imported:")
            st.dataframe(
                pd.DataFrame([{"file": r["name"], "reason": r["reason"]}
                              for r in result["rejected"]]),
                hide_index=True, width="stretch",
            )
        if result["problems"]:
            st.warning(f"{len(result['problems'])} file(s) have problems: see the validation "
                       "report below.")
        if st.button("Dismiss", key="dismiss-import"):
            del st.session_state[LAST_IMPORT]
            st.rerun()


# --------------------------------------------------------------------------- overview
overview = dataset_overview(ctx, name)
st.title(f"Datasets · {plain(name)}")
_show_last_import()

if overview.total == 0:
    st.info(
        "This project has no usable images yet. Add a zip file or a folder below; if you "
        "already did, the validation report says what was wrong with the files."
    )

m1, m2, m3, m4 = st.columns(4)
m1.metric("Images", overview.total)
m2.metric("Good", overview.good)
m3.metric("Defect", overview.defect)
m4.metric("Problems found", len(overview.problems),
          help="Files left out or limited on import: unreadable, duplicate, mask missing or "
               "of the wrong size. The validation report below lists them.")

if overview.total:
    left, right = st.columns(2)
    with left:
        st.markdown("**Images per split and label**")
        st.dataframe(pd.DataFrame(overview.counts, columns=["split", "good", "defect", "total"]),
                     hide_index=True, width="stretch")
    with right:
        st.markdown("**Defect images per type**")
        if overview.defect_types:
            st.dataframe(pd.DataFrame({"defect type": list(overview.defect_types),
                                       "images": list(overview.defect_types.values())}),
                         hide_index=True, width="stretch")
        else:
            st.caption("No defect images. That is fine for training; the Evaluation page "
                       "needs a few to measure how well defects are found.")

with st.expander(f"Validation report ({len(overview.problems)} problem(s))",
                 expanded=bool(overview.problems) and overview.total == 0):
    if overview.problems:
        st.dataframe(pd.DataFrame(overview.problems), hide_index=True, width="stretch")
        st.caption("Unusable files are left out of the project; fix them and press Re-scan.")
    else:
        st.success(f"All {overview.total} images and their masks opened without problems.")

with st.expander("Add images", expanded=overview.total == 0):
    import_forms(name, create=False)
    st.caption(f"The project's folder on the server: {plain(overview.data_root)}")
    if st.button("Re-scan the project folder",
                 help="Pick up images copied into the folder by hand, and check them again."):
        with st.spinner("Checking every image…"):
            st.session_state[LAST_IMPORT] = rescan(ctx, name).as_dict()
        st.rerun()

if overview.total == 0:
    st.stop()

# --------------------------------------------------------------------------- gallery
st.subheader("Gallery", anchor=False)


SPLIT_KEY, LABEL_KEY, TYPE_KEY = (f"ds_split_{name}", f"ds_label_{name}",
                                  f"ds_type_{name}")  # per project: choices differ


def _reset_page() -> None:
    st.session_state[PAGE_KEY] = 1


def _label_changed() -> None:
    """Defect type depends on label: a type kept from "defect" would match nothing."""
    st.session_state[TYPE_KEY] = ALL
    _reset_page()


@st.dialog("Image details", width="large")
def _details(item: GalleryItem, masks: bool) -> None:
    pic, meta = st.columns([3, 2])
    preview = thumbnail(ctx.home, item.path, item.mask_path, masks, side=PREVIEW_SIDE,
                        square=False)
    if preview is None:
        pic.error("This file cannot be opened as an image.")
    else:
        pic.image(preview, caption=plain(item.title) + (" (mask outlined in yellow)"
                                                 if masks and item.mask_path else ""))
    detail = image_detail(item)
    meta.dataframe(pd.DataFrame({"detail": list(detail), "value": list(detail.values())}),
                   hide_index=True, width="stretch")


f1, f2, f3, f4 = st.columns([1, 1, 1, 1], vertical_alignment="bottom")
split = f1.selectbox("Split", [ALL, *overview.splits], key=SPLIT_KEY, on_change=_reset_page)
labels = [ALL, *overview.labels]
# the gallery opens on good images: what the model learns from, and what most parts look like
label = f2.selectbox("Label", labels, key=LABEL_KEY, on_change=_label_changed,
                     index=labels.index("good") if "good" in labels else 0)
types = [ALL, *overview.defect_types] if label != "good" else [ALL]
defect_type = f3.selectbox("Defect type", types, key=TYPE_KEY, on_change=_reset_page,
                           disabled=len(types) == 1)
show_masks = f4.toggle("Show masks", key="ds_masks",
                       help="Outline the defect masks (yellow on a black border).")

filters = {
    "split": None if split == ALL else split,
    "label": None if label == ALL else label,
    "defect_type": None if defect_type == ALL else defect_type,
}
page = int(st.session_state.get(PAGE_KEY, 1))
items, matching = gallery_page(ctx, name, page=page, per_page=PER_PAGE, **filters)
pages = max(1, math.ceil(matching / PER_PAGE))
if page > pages:
    st.session_state[PAGE_KEY] = pages
    st.rerun()

if not items:
    st.info("No image matches these filters.")
else:
    st.caption("Click an image's name to open its details.")
    grid = st.columns(COLUMNS)
    for i, item in enumerate(items):
        with grid[i % COLUMNS]:
            data = thumbnail(ctx.home, item.path, item.mask_path, show_masks)
            if data is None:
                st.warning(f"{plain(item.title)}: cannot be opened")
            else:
                st.image(data, width="stretch")
            # the name is the button: split · type · name, since names repeat across folders
            if st.button(plain(item.title), key=f"ds_open_{item.id}", type="tertiary",
                         help=f"Open the details of {plain(item.title)}"):
                _details(item, show_masks)
    nav1, nav2 = st.columns([1, 3], vertical_alignment="center")
    nav1.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=PAGE_KEY)
    first = (page - 1) * PER_PAGE + 1
    nav2.caption(f"Images {first}–{first + len(items) - 1} of {matching}")

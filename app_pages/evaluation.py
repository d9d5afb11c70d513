"""Evaluation: how well a trained model separates good from defect, and where to cut."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from services.data.gallery import thumbnail
from services.evaluation.report import (
    NothingToEvaluate,
    at_threshold,
    cross_validated,
    evaluable_versions,
    evaluated_images,
    heat_legend,
    heatmap_overlay,
    load_evaluation,
    review_band,
    roc_pr,
    sample_warning,
    save_threshold,
    threshold_history,
    trainings_running,
    worst_errors,
)
from services.evaluation.stress import (
    GROUP_TITLES,
    change_words,
    detectability_lines,
    detectability_sentences,
    latest_stress,
    request_stress,
    robustness_lines,
    robustness_sentences,
    stress_job,
)
from services.wording import GLOSSARY, method_words
from ui.common import (
    AUGMENTATION_PAGE,
    TRAINING_PAGE,
    context,
    fmt,
    need_project,
    plain,
    with_project,
)
from ui.jobs import ACTIVE_JOB, job_panel

#: Heatmaps per page of the gallery (four rows of six).
GALLERY_PAGE = 24
GOOD_COLOUR = "#2E8B57"
DEFECT_COLOUR = "#C0392B"
LINE_COLOUR = "#1F2A30"
#: Eleven colours that stay apart (Paul Tol's and Okabe-Ito's schemes), none near the
#: threshold's red; the dash of a line tells its group on top.
ROBUSTNESS_COLOURS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77",
                      "#AA4499", "#000000", "#E69F00", "#0072B2", "#777777")

ctx = context()
name = need_project()
if name is None:
    st.stop()
st.title(f"Evaluation · {plain(name)}")

versions = evaluable_versions(ctx, name)
running = trainings_running(ctx, name)
for run in running:
    st.info(f"Training {run['label']} is {run['status']} ({run['progress']:.0%}). Its "
            "evaluation appears here when it finishes.", icon=":material/hourglass_top:")
if not versions:
    if not running:
        st.info("There is no trained model to evaluate yet. Train one first: it takes about a "
                "minute for a few dozen images.")
    st.page_link(TRAINING_PAGE, label="Go to Training", icon=":material/model_training:",
                 query_params=with_project(name))
    st.stop()

labels = {v["id"]: v["label"] for v in versions}
mv_id = st.selectbox("Model", list(labels), format_func=labels.get, key=f"ev_model_{name}")
try:
    ev = load_evaluation(ctx, name, mv_id)
except NothingToEvaluate as exc:
    st.warning(f"This model cannot be evaluated: {plain(exc)}.")
    st.stop()

if len(ev.scores) == 0:
    st.warning("No held-out image of this model is still in the project, so there is nothing "
               "to measure. Add good and defect test images and train again.")
    st.stop()

st.markdown(
    f"Measured on **{len(ev.images)} images the model did not learn from**: "
    f"{ev.n_good} good and {ev.n_defect} defect"
    + (f" (all {ev.n_synthetic} synthetic)" if ev.n_synthetic == ev.n_defect > 0
       else f" ({ev.n_synthetic} synthetic)" if ev.n_synthetic else "") + "."
    + (f" {ev.unmatched} scored image(s) are no longer in the project and are left out."
       if ev.unmatched else "")
)
if ev.n_synthetic:
    st.info("This project has no defect images to check the model with, so training painted "
            f"{ev.n_synthetic} synthetic defects (stains, pasted patches, scratches) into good "
            "images it had kept aside and set the threshold between those and the good "
            "images. The numbers below measure those made-up defects, not real ones: add a "
            "few real defect images and train again for a real evaluation. The made-up "
            "defects are the images marked “synthetic” (perlin: a stain, cutpaste: a pasted "
            "patch, scar: a scratch) in the heatmaps below, and among the worst mistakes if "
            "the model misses one.", icon=":material/auto_fix_high:")
if not ev.has_both:
    missing = "defect" if ev.n_defect == 0 else "good"
    st.info(f"There are no {missing} images among them, so curves and error rates for "
            f"{missing} parts cannot be measured. Add a few {missing} test images and train "
            "again for a full evaluation.")
few = sample_warning(ev)
if few:
    st.warning(few, icon=":material/warning:")

# --------------------------------------------------------------------------- metrics
st.subheader("Scores", anchor=False)
st.dataframe(pd.DataFrame(ev.metrics), hide_index=True, width="stretch",
             column_config={"metric": st.column_config.TextColumn(width="large"),
                            "value": st.column_config.TextColumn(width="small")})
for note in ev.notes:
    if not ev.n_synthetic or "synthetic" not in note:  # said above, in the info box
        st.caption(note)
with st.expander("What the words on this page mean"):
    for term, meaning in GLOSSARY.items():
        st.markdown(f"**{term}** — {meaning}")

# --------------------------------------------------------------------------- threshold
st.subheader("Threshold", anchor=False)
lo, hi, step = ev.slider_scale()
current = ev.threshold if ev.threshold is not None else round((lo + hi) / 2 / step) * step
slider_key = f"ev_thr_{mv_id}"
threshold = st.slider(
    "Anomaly score at which a part is called defective",
    min_value=lo, max_value=hi, value=current, step=step, format="%.4f",
    key=slider_key,
    help="Move it right for fewer false alarms (but more missed defects), left for the "
         "opposite. Nothing is changed until you press Save.",
)
st.caption(f"Threshold in use: **{fmt(ev.threshold, 4)}** ({method_words(ev.threshold_method)})"
           + ("" if ev.is_active else " — this is not the model in use"))
stats = at_threshold(ev, threshold)

matrix_col, rates_col = st.columns([3, 2])
with matrix_col:
    st.markdown("**What happens at this threshold**")
    st.dataframe(
        pd.DataFrame(
            {"called good": [stats["tn"], stats["fn"]],
             "called defect": [stats["fp"], stats["tp"]]},
            index=["actually good", "actually defect"],
        ),
        width="stretch",
    )
with rates_col:
    r1, r2 = st.columns(2)
    r1.metric("Missed defects", "—" if stats["missed_defects"] is None
              else f"{stats['missed_defects']:.0%}",
              help="Share of defect images called good (false negatives).")
    r2.metric("False alarms", "—" if stats["false_alarms"] is None
              else f"{stats['false_alarms']:.0%}",
              help="Share of good images called defective (false positives).")
    r3, r4 = st.columns(2)
    r3.metric("Precision", fmt(stats["precision"], 2),
              help="Of the images called defective, the share that really are.")
    r4.metric("Accuracy", fmt(stats["accuracy"], 2))

honest = cross_validated(ev)
if honest is None:
    st.caption("These counts come from the same images that chose the threshold, so they are "
               "optimistic: new parts will likely do somewhat worse.")
else:
    st.markdown(
        f"**On images that did not choose the threshold** (each image called at the threshold "
        f"chosen automatically on the other {honest['images'] - 1}): F1 **{honest['f1']:.2f}**, "
        f"missed defects **{honest['missed_defects']:.0%}** ({honest['fn']} of "
        f"{honest['fn'] + honest['tp']}), false alarms **{honest['false_alarms']:.0%}** "
        f"({honest['fp']} of {honest['fp'] + honest['tn']})."
    )
    st.caption("The counts above come from the same images that chose the threshold, so they "
               "are optimistic; this leave-one-out estimate is closer to what new parts will "
               "show.")

if ev.is_active:
    same = ev.threshold is not None and abs(threshold - ev.threshold) < step / 2
    if st.button("Save threshold", type="primary", icon=":material/save:", disabled=same,
                 help="Use this threshold for every part inspected from now on. The previous "
                      "one is kept in the history."):
        try:
            row = save_threshold(ctx, name, mv_id, threshold)
        except (ValueError, LookupError) as exc:
            st.error(f"The threshold was not saved: {plain(exc)}")
        else:
            st.toast(f"Threshold {row['raw_value']:.4f} saved")
            st.session_state["ev_saved"] = row["raw_value"]
            st.rerun()
    if "ev_saved" in st.session_state:
        st.success(f"Saved: the threshold in use is now {st.session_state.pop('ev_saved'):.4f}.")
else:
    st.caption("Only the newest model's threshold can be saved (it is the one in use).")

# --------------------------------------------------------------------------- charts
hist = go.Figure()
for value, label, colour in ((0, "good", GOOD_COLOUR), (1, "defect", DEFECT_COLOUR)):
    hist.add_trace(go.Histogram(x=ev.scores[ev.labels == value], name=label, opacity=0.65,
                                marker_color=colour, nbinsx=30))
hist.add_vline(x=threshold, line_color=LINE_COLOUR, line_width=2,
               annotation_text="threshold", annotation_position="top")
if ev.threshold is not None and abs(threshold - ev.threshold) >= step / 2:
    hist.add_vline(x=ev.threshold, line_color=LINE_COLOUR, line_dash="dot",
                   annotation_text="in use", annotation_position="bottom")
hist.update_layout(barmode="overlay", title="Scores of good and defect images",
                   xaxis_title="anomaly score", yaxis_title="images", height=340,
                   margin={"t": 50, "b": 40, "l": 40, "r": 10}, legend_title_text="")
st.plotly_chart(hist, width="stretch")

curve = roc_pr(ev)
if curve is not None:
    roc_col, pr_col = st.columns(2)
    roc = go.Figure(go.Scatter(x=curve["roc"]["fpr"], y=curve["roc"]["tpr"], mode="lines",
                               name="ROC", line={"color": "#2F6F8F"}))
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="guessing",
                             line={"dash": "dot", "color": "#999"}))
    roc.add_trace(go.Scatter(x=[stats["false_alarms"]], y=[stats["recall"]], mode="markers",
                             name="this threshold", marker={"size": 11, "color": LINE_COLOUR}))
    roc.update_layout(title="ROC curve", xaxis_title="false alarm rate",
                      yaxis_title="share of defects found", height=340,
                      margin={"t": 50, "b": 40, "l": 40, "r": 10})
    roc_col.plotly_chart(roc, width="stretch")
    pr = go.Figure(go.Scatter(x=curve["pr"]["recall"], y=curve["pr"]["precision"],
                              mode="lines", name="PR", line={"color": "#2F6F8F"}))
    if stats["precision"] is not None:
        pr.add_trace(go.Scatter(x=[stats["recall"]], y=[stats["precision"]], mode="markers",
                                name="this threshold",
                                marker={"size": 11, "color": LINE_COLOUR}))
    pr.update_layout(title="Precision–recall curve", xaxis_title="share of defects found",
                     yaxis_title="precision", height=340,
                     margin={"t": 50, "b": 40, "l": 40, "r": 10})
    pr_col.plotly_chart(pr, width="stretch")

# --------------------------------------------------------------------------- review band
band = review_band(ev)
if band is not None:
    st.subheader("Review band", anchor=False)
    st.markdown("Instead of one threshold, two: below the band a part is **sure good**, above "
                "it **sure defect**, and in between a person should **review** it.")
    st.dataframe(
        pd.DataFrame(band["table"]).rename(columns={"good": "of them good",
                                                    "defect": "of them defect"}),
        hide_index=True, width="stretch",
    )
    st.caption(band["caption"])

# --------------------------------------------------------------------------- worst mistakes
fps, fns = worst_errors(ev, threshold)


def _mistakes(title: str, rows: list, empty: str) -> None:
    st.markdown(f"**{title}**")
    if not rows:
        st.caption(empty)
        return
    cols = st.columns(4)
    for col, row in zip(cols, rows, strict=False):
        image = heatmap_overlay(ctx.home, row.path, row.heatmap_path) or thumbnail(
            ctx.home, row.path)
        caption = plain(f"{row.name} · score {row.score:.4f}" + (
            f" · {row.defect_type}" if row.defect_type else ""))
        if image is None:
            col.warning(f"{plain(row.name)}: file cannot be opened")
        else:
            col.image(image, caption=caption, width="stretch")


st.subheader("Worst mistakes at this threshold", anchor=False)
_mistakes("False alarms: good images called defective", fps,
          "None: no good image scores at or above the threshold.")
_mistakes("Missed defects: defect images called good", fns,
          "None: every defect image scores at or above the threshold.")


def _legend() -> None:
    st.image(heat_legend(), width=512)
    st.caption(
        "Heatmap colours, the same scale in every image: blue is like the good parts, the "
        f"switch to yellow is the threshold the model was trained with ({fmt(ev.heat_anchor, 4)})"
        ", red is twice as far from anything seen on good parts."
    )


_legend()

st.subheader("Heatmaps of the evaluated images", anchor=False)
which = st.radio("Show", ["all", "mistakes", "correct"], horizontal=True, key=f"ev_which_{mv_id}",
                 format_func={"all": "All", "mistakes": "Wrong calls",
                              "correct": "Right calls"}.get)
shown = evaluated_images(ev, threshold, which)
if not shown:
    st.caption("No image in this group at this threshold.")
if len(shown) > GALLERY_PAGE:  # hundreds of heatmaps would bury everything below them
    pages = -(-len(shown) // GALLERY_PAGE)
    page = st.number_input(f"Page (of {pages}; {GALLERY_PAGE} images a page, highest score "
                           "first)", min_value=1, max_value=pages, value=1, step=1,
                           key=f"ev_gallery_page_{mv_id}_{which}")
    shown = shown[(int(page) - 1) * GALLERY_PAGE:int(page) * GALLERY_PAGE]
cols = st.columns(6)
for i, row in enumerate(shown):
    image = heatmap_overlay(ctx.home, row["image"].path, row["image"].heatmap_path,
                            side=192) or thumbnail(ctx.home, row["image"].path)
    with cols[i % 6]:
        if image is None:
            st.warning(f"{plain(row['image'].name)}: file cannot be opened")
        else:
            st.image(image, caption=plain(row["caption"]), width="stretch")

# --------------------------------------------------------------------------- history
st.subheader("Threshold history", anchor=False)
history = threshold_history(ctx, name, mv_id)
if history:
    st.dataframe(
        pd.DataFrame(history).drop(columns=["id", "method"]), hide_index=True, width="stretch",
        column_config={
            "bank": st.column_config.TextColumn("good-part bank", width="small",
                                                help=GLOSSARY["Bank"]),
            "threshold": st.column_config.NumberColumn(format="%.4f", width="small"),
            "chosen": st.column_config.TextColumn(width="large"),
            "active": st.column_config.CheckboxColumn("in use", width="small"),
            "by": st.column_config.TextColumn(width="small"),
            "saved": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm", width="small"),
        },
    )
else:
    st.caption("No threshold recorded for this model.")

# --------------------------------------------------------------------------- stress test
st.subheader("Stress test: smallest defect it catches, and what lighting/blur/noise does to "
             "good parts", anchor=False)
st.markdown("The test paints made-up defects of growing size and contrast onto good parts this "
            "model did not learn from, and changes their light, sharpness and noise step by "
            "step. It shows how small a defect the model still catches, and which everyday "
            "changes make it call good parts defective. It scores a few hundred pictures, so "
            "it runs in the background (a minute or more); you can leave the page meanwhile.")
stress_now = stress_job(ctx, name, mv_id)
stress_running = stress_now is not None and stress_now["status"] in ACTIVE_JOB
if st.button("Run the stress test", icon=":material/science:", disabled=stress_running,
             key=f"ev_stress_{mv_id}",
             help="Measures this model on its held-out good images; nothing is changed."):
    try:
        request_stress(ctx, name, mv_id)
    except (ValueError, LookupError, RuntimeError) as exc:
        st.error(f"The stress test cannot run: {plain(exc)}")
    else:
        st.rerun()


def _stress_panel() -> None:
    """Progress of this model's stress test, redrawn every second while it runs."""
    job_panel(ctx, stress_job(ctx, name, mv_id), title="Stress test", noun="the stress test",
              stops="the test", key="ev_stress", was_running=stress_running)


st.fragment(_stress_panel, run_every=1.0 if stress_running else None)()

stress = latest_stress(ctx, name, mv_id)
if stress is None:
    if not stress_running:
        st.caption("No stress test of this model yet.")
else:
    det, rob = stress["detectability"], stress["robustness"]
    side = f" ({stress['image_side']} px)" if stress["image_side"] else ""
    st.caption(f"Measured on {stress['n_images']} held-out good image(s) at the size the "
               f"model sees them{side}, threshold {stress['threshold']:.4f}.")
    st.markdown("**Smallest defect it catches**")
    st.markdown("\n".join(f"- {plain(line)}" for line in detectability_sentences(det)))
    lines = detectability_lines(det)  # none when every good part is already a false alarm
    fig = go.Figure()
    for line in lines:
        fig.add_trace(go.Scatter(x=line["area"], y=line["rate"], mode="lines+markers",
                                 name=line["name"], text=line["text"],
                                 hovertemplate="%{x:.3g} % of the image: %{text} caught"
                                               "<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=det["rate"], line_color=LINE_COLOUR, line_dash="dot",
                  annotation_text=f"caught in {det['rate']:.0%} of images",
                  annotation_position="bottom right")
    areas = sorted({a for line in lines for a in line["area"]})  # ticks at the tested sizes
    fig.update_layout(title="Share of painted defects caught, by size and contrast",
                      xaxis_title="defect area (% of the image, log scale)",
                      xaxis_tickvals=areas, xaxis_ticktext=[f"{a:g} %" for a in areas],
                      yaxis_title="share of the images caught", xaxis_type="log",
                      yaxis_tickformat=".0%",
                      yaxis_range=[-0.03, 1.05], height=360, legend_title_text="",
                      margin={"t": 50, "b": 40, "l": 40, "r": 10})
    if lines:
        st.plotly_chart(fig, width="stretch", key=f"ev_stress_det_{mv_id}")

    st.markdown("**What lighting, blur and noise do to good parts**")
    st.markdown("\n".join(f"- {plain(line)}" for line in robustness_sentences(rob)))
    fig = go.Figure()
    rob_lines = robustness_lines(rob)
    strengths = sorted({x for line in rob_lines for x in line["strength"]})
    # eleven lines: a colour-blind-safe colour each, a dash per group, the legend by group
    dashes = dict(zip(GROUP_TITLES, ("solid", "dash", "dot"), strict=False))
    for line, colour in zip(rob_lines, ROBUSTNESS_COLOURS * 2, strict=False):
        fig.add_trace(go.Scatter(x=line["strength"], y=line["max"], mode="lines+markers",
                                 name=line["name"], customdata=line["mean"],
                                 line={"color": colour,
                                       "dash": dashes.get(line["group"], "solid")},
                                 legendgroup=line["group"],
                                 legendgrouptitle_text=line["group_title"],
                                 hovertemplate="strength %{x:.2g}: highest %{y:.4g}, mean "
                                               "%{customdata:.4g}<extra>%{fullData.name}"
                                               "</extra>"))
    fig.add_hline(y=stress["threshold"], line_color=DEFECT_COLOUR, line_width=2,
                  annotation_text="threshold", annotation_position="top left")
    fig.update_layout(title="Highest good-part score as each change gets stronger",
                      xaxis_title="strength of the change (0 = unchanged; 1 = the strongest "
                                  "tested, see the table below)",
                      xaxis_tickvals=strengths,
                      yaxis_title=f"highest score of the {stress['n_images']} good images",
                      height=480, legend_title_text="", legend_groupclick="toggleitem",
                      margin={"t": 50, "b": 40, "l": 40, "r": 10})
    st.plotly_chart(fig, width="stretch", key=f"ev_stress_rob_{mv_id}")
    if rob["pushes_over"]:
        st.page_link(AUGMENTATION_PAGE, label="Choose a preset: Augmentation",
                     icon=":material/auto_awesome_mosaic:", query_params=with_project(name))
    with st.expander("What each change is at full strength"):
        st.dataframe(pd.DataFrame(change_words()), hide_index=True, width="stretch")

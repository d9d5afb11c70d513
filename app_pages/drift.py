"""Drift monitor: are new lots still like the parts the model learned from, and if not, teach it.

Verdict in words first, the statistics and charts beneath (Evidently/NannyML style): a quality
engineer reads "lot 7 drifted: scores higher than usual" before any p-value. Every number comes
from services.monitoring.drift (the overview) and services.history.adaptation (updates, the
before/after comparison, versions); this page draws them.

The overview takes seconds (embedding MMD runs a permutation test on backbone features), so it
is an ``st.cache_data`` call keyed by the project, the lots' latest prediction time, the model
in use and the embedding toggle, behind a spinner. The jobs layer has no drift kind yet; when
it has one, the overview should become a job like the bank update below.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from services.data.gallery import thumbnail
from services.history.adaptation import (
    ONLINE_CAP,
    ONLINE_CHUNK,
    ONLINE_WINDOW,
    compare_versions,
    good_lot_images,
    job_error_words,
    plan_online,
    save_uploads,
    start_online_update,
    start_update,
    versions,
)
from services.history.versions import rollback
from services.inference.lots import list_lots, lot_model
from services.jobs.api import get_job, list_jobs
from services.monitoring.drift import DriftOverview, drift_overview
from services.wording import method_words
from ui.common import (
    LOTS_PAGE,
    TRAINING_PAGE,
    context,
    fmt,
    need_project,
    plain,
    with_project,
)

UPDATE_JOB = "_drift_update_job"  # the bank update this session submitted
LAST_UPDATE = "_drift_last_update"  # its result or its error, shown once it ended
COMPARE = "_drift_compare"  # (before, after) bank versions whose comparison is shown
ROLLBACK = "_drift_rollback"  # the version a person asked to roll back to (dialog open)
VERDICT_WORDS = {"stable": "Stable", "watch": "Watch", "drift": "Drift"}
VERDICT_BADGE = {"stable": "green", "watch": "orange", "drift": "red"}
SEVERITY = {"stable": 0, "watch": 1, "drift": 2}
METRIC_WORDS = {"median": "Median score", "p95": "95th percentile score",
                "reject_rate": "Reject rate"}
SIGNAL_WORDS = {"scores": "scores", "brightness": "brightness", "contrast": "contrast",
                "sharpness": "sharpness"}
KIND_WORDS = {"initial": "trained", "incremental": "good images added",
              "online": "learned from a lot", "rollback": "rolled back"}
REFERENCE_COLOUR = "#8A9BA8"
LOT_COLOUR = "#1F77B4"
ALERT_COLOUR = "#C0392B"
#: One colour per bank version a lot was scored with (in order of first use); red is kept
#: for alerts, grey for the reference.
VERSION_COLOURS = ("#1F77B4", "#2CA02C", "#9467BD", "#FF7F0E", "#17BECF", "#8C564B",
                   "#E377C2", "#BCBD22")
CARDS = 4  # newest lots shown as cards; the table holds them all

ctx = context()
name = need_project()
if name is None:
    st.stop()
st.title(f"Drift monitor · {plain(name)}")
model = lot_model(ctx, name)
if model is None:
    st.warning("This project has no trained model yet. Drift is measured against what the "
               "model learned from, so train one first.")
    st.page_link(TRAINING_PAGE, label="Train a model on the Training page",
                 icon=":material/model_training:", query_params=with_project(name))
    st.stop()
lots = list_lots(ctx, name)  # newest first


# --------------------------------------------------------------------------- drift


@st.cache_data(show_spinner=False, max_entries=16)
def _overview(project: str, latest: str, in_use: str, embedding: bool) -> DriftOverview:
    """The overview, recomputed only when a lot gained predictions, the model in use changed
    or the toggle moved (``latest`` and ``in_use`` are the cache key, not inputs)."""
    return drift_overview(context(), project, embedding=embedding)


def _headline(ov: DriftOverview) -> None:
    worst = max((lot.verdict for lot in ov.lots), key=lambda v: SEVERITY.get(v, 0),
                default="stable")
    show = {"stable": st.success, "watch": st.warning, "drift": st.error}.get(worst, st.info)
    icon = {"stable": ":material/check_circle:", "watch": ":material/visibility:",
            "drift": ":material/warning:"}.get(worst)
    show(plain(ov.headline), icon=icon)
    st.caption(f"Compared with {plain(ov.reference_label)} ({ov.reference_n} scores of good "
               "images the model did not learn from).")


def _cards(ov: DriftOverview) -> None:
    newest = list(reversed(ov.lots))[:CARDS]
    for col, lot in zip(st.columns(len(newest)), newest, strict=True):
        with col.container(border=True):
            colour = VERDICT_BADGE.get(lot.verdict, "gray")
            word = VERDICT_WORDS.get(lot.verdict, lot.verdict)
            st.markdown(f"**{plain(lot.name)}**  \n:{colour}-badge[{word}]")
            st.caption(f"{lot.n_images} images · {plain(lot.model_label)} · median score "
                       f"{lot.median:.2f} · reject rate {lot.reject_rate:.0%}")
            if lot.alerts:
                st.markdown("\n".join(f"- {plain(a)}" for a in lot.alerts))
            else:
                st.caption("No alert: like the reference.")
            for note in getattr(lot, "notes", []):
                st.caption(plain(note))


def _lots_table(ov: DriftOverview) -> None:
    st.dataframe(
        pd.DataFrame([{
            "lot": lot.name, "scored": lot.started_at, "images": lot.n_images,
            "verdict": VERDICT_WORDS.get(lot.verdict, lot.verdict),
            "median score": lot.median, "p95 score": lot.p95, "reject rate": lot.reject_rate,
            "model": lot.model_label, "alerts": " · ".join(lot.alerts),
        } for lot in reversed(ov.lots)]),
        hide_index=True, width="stretch",
        column_config={
            "scored": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "median score": st.column_config.NumberColumn(format="%.3f"),
            "p95 score": st.column_config.NumberColumn(format="%.3f"),
            "reject rate": st.column_config.NumberColumn(
                format="percent", help="Share of the lot's images called defective."),
            "alerts": st.column_config.TextColumn(width="large"),
        },
    )


def _x_axis(fig: go.Figure, ov: DriftOverview, **where: Any) -> None:
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(ov.lots))),
                     ticktext=[lot.name for lot in ov.lots], **where)


def _changes(fig: go.Figure, ov: DriftOverview, rows: int = 1) -> None:
    """A dashed line before every lot scored with another model or threshold."""
    for change in ov.changes:
        x = int(change["lot_index"]) - 0.5
        for row in range(1, rows + 1):
            fig.add_vline(x=x, line_dash="dot", line_color="#7F8C8D", row=row, col=1)
        fig.add_annotation(x=x, y=1.0, yref="paper", text=str(change["label"]),
                           showarrow=False, xanchor="left", yanchor="bottom",
                           font={"size": 11, "color": "#566573"})


def _version_colours(ov: DriftOverview) -> dict[int, str]:
    """Bank version (state version id) -> colour, in the order the lots first used them."""
    ids = list(dict.fromkeys(lot.state_version_id for lot in ov.lots))
    return {sid: VERSION_COLOURS[i % len(VERSION_COLOURS)] for i, sid in enumerate(ids)}


def _fill(colour: str, alpha: float = 0.35) -> str:
    """A box's fill: its colour, see-through, so the median line stays visible."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _box_plot(ov: DriftOverview) -> None:
    fig = go.Figure()
    if ov.reference_scores:
        fig.add_hrect(y0=min(ov.reference_scores), y1=max(ov.reference_scores),
                      fillcolor=REFERENCE_COLOUR, opacity=0.15, line_width=0,
                      annotation_text="range of the reference", annotation_position="top left")
    colours = _version_colours(ov)
    # One Box trace per (bank version, drift or not), every lot a box at its own x: plotly
    # groups a trace's values by x. A trace per lot cost 0.27 s of validation for 100 lots.
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, lot in enumerate(ov.lots):
        groups.setdefault((lot.state_version_id, lot.verdict == "drift"), []).append(i)
    named: set[int] = set()
    for (sid, drift), idx in groups.items():
        colour = colours[sid]
        label = ov.lots[idx[0]].model_label
        fig.add_trace(go.Box(
            x=[i for i in idx for _ in ov.lots[i].scores],
            y=[v for i in idx for v in ov.lots[i].scores],
            name=label + (" · drift" if drift and len(colours) > 1 else ""),
            legendgroup=f"v{sid}", showlegend=len(colours) > 1 and sid not in named,
            marker_color=colour, line_color=colour, boxpoints="outliers", width=0.6,
            fillcolor=_fill(ALERT_COLOUR if drift else colour)))
        named.add(sid)
    fig.add_trace(go.Scatter(
        x=list(range(len(ov.lots))), y=[lot.threshold for lot in ov.lots], mode="markers",
        name="threshold", marker={"symbol": "line-ew-open", "size": 30, "color": ALERT_COLOUR,
                                  "line": {"width": 2}},
        hovertemplate="threshold %{y:.4g}<extra></extra>"))
    _x_axis(fig, ov)
    _changes(fig, ov)
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis_title="anomaly score", showlegend=True,
                      legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    st.plotly_chart(fig, width="stretch")


def _control_chart(ov: DriftOverview, metric: str) -> None:
    series = ov.charts[metric]
    x = list(range(len(series.values)))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("Shewhart: each lot against ±3σ",
                                        "EWMA: slow shifts (λ = 0.2)",
                                        "CUSUM: sustained shifts up or down"))
    colours = _version_colours(ov)
    fig.add_trace(go.Scatter(x=x, y=series.values, mode="lines", name="lot",
                             line_color="#B0B7BD", showlegend=False), row=1, col=1)
    for sid, colour in colours.items():  # the points, one colour per bank version
        idx = [i for i in x if i < len(ov.lots) and ov.lots[i].state_version_id == sid]
        fig.add_trace(go.Scatter(
            x=idx, y=[series.values[i] for i in idx], mode="markers",
            name=ov.lots[idx[0]].model_label if idx else "lot",
            marker={"color": colour, "size": 8}, legendgroup=f"v{sid}",
            showlegend=len(colours) > 1,
            hovertext=[f"{ov.lots[i].name} · {ov.lots[i].model_label}" for i in idx],
            hoverinfo="text+y"), row=1, col=1)
    for value, label, dash in ((series.center, "center", "solid"), (series.ucl, "UCL", "dash"),
                               (series.lcl, "LCL", "dash")):
        fig.add_hline(y=value, line_dash=dash, line_color="#7F8C8D", row=1, col=1,
                      annotation_text=label, annotation_position="top left",
                      annotation_font={"size": 10, "color": "#566573"})
    hits = [i for i, h in enumerate(series.rule_hits) if h]
    if hits:
        fig.add_trace(go.Scatter(
            x=hits, y=[series.values[i] for i in hits], mode="markers", name="rule broken",
            marker={"symbol": "x", "size": 13, "color": ALERT_COLOUR},
            hovertext=["; ".join(series.rule_hits[i]) for i in hits], hoverinfo="text"),
            row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=series.ewma, mode="lines+markers", name="EWMA",
                             line_color="#8E44AD"), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=series.ewma_ucl, mode="lines", name="EWMA limits",
                             line={"dash": "dash", "color": "#7F8C8D"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=series.ewma_lcl, mode="lines", showlegend=False,
                             line={"dash": "dash", "color": "#7F8C8D"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=series.cusum_pos, mode="lines+markers", name="CUSUM up",
                             line_color="#D35400"), row=3, col=1)
    fig.add_trace(go.Scatter(x=x, y=[-v for v in series.cusum_neg], mode="lines+markers",
                             name="CUSUM down", line_color="#16A085"), row=3, col=1)
    for h in (series.cusum_h, -series.cusum_h):
        fig.add_hline(y=h, line_dash="dash", line_color=ALERT_COLOUR, row=3, col=1)
    for row in (1, 2, 3):
        _x_axis(fig, ov, row=row, col=1)
    _changes(fig, ov, rows=3)
    fig.update_layout(height=620, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.08})
    st.plotly_chart(fig, width="stretch")
    broken = [(ov.lots[i].name, series.rule_hits[i]) for i in hits if i < len(ov.lots)]
    if broken:
        st.caption("Rules broken (Western Electric): " + "; ".join(
            f"{plain(lot)}: {plain(', '.join(rules))}" for lot, rules in broken))


def _statistics(ov: DriftOverview) -> None:
    rows = []
    for lot in reversed(ov.lots):
        row: dict[str, Any] = {"lot": lot.name}
        for signal, words in SIGNAL_WORDS.items():
            stats = lot.statistics.get(signal) or {}
            row[f"{words}: KS p"] = stats.get("ks_p")
            row[f"{words}: PSI"] = stats.get("psi")
            row[f"{words}: Wasserstein"] = stats.get("wasserstein")
        embedding = lot.statistics.get("embedding") or {}
        row["features: MMD"] = embedding.get("mmd")
        row["features: MMD p"] = embedding.get("p_value")
        rows.append(row)
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in table.columns if c != "lot"})
    st.caption(
        "KS p: the chance of a difference this large between the lot and the reference if "
        "nothing had changed (below 0.05: changed). PSI: how much the distribution moved "
        "(above 0.1 a little, above 0.25 a lot). Wasserstein: how far it moved, in the units "
        "of the signal. MMD: the same question asked of the model's features; empty when "
        "Embedding drift is off. Brightness, contrast and sharpness are measured on the "
        "images themselves, so a lighting or focus change shows even before the scores move.")


def _drift_section() -> None:
    if not lots:
        st.info("No lot scored yet, so there is nothing to compare with what the model "
                "learned. Score a lot of new parts first; each lot then shows here as stable, "
                "watch or drift.")
        st.page_link(LOTS_PAGE, label="Score a lot on the Production lots page",
                     icon=":material/fact_check:", query_params=with_project(name))
        return
    embedding = st.toggle(
        "Embedding drift (slower)", value=False, key="drift-embedding",
        help="Also compare the model's features of each lot with those of the reference "
             "(MMD with a permutation test). Catches changes the scores miss; takes longer.")
    latest = max((lot["last_scored"] for lot in lots if lot["last_scored"] is not None),
                 default=None)
    key = f"{latest.isoformat() if latest else ''}/{sum(lot['scored'] for lot in lots)}"
    in_use = f"{model['model']}/{model['bank_version']}/{model['threshold']}"
    with st.spinner("Comparing the lots with the reference…"):
        try:
            ov = _overview(name, key, in_use, embedding)
        except (LookupError, ValueError) as exc:
            st.warning(f"Drift cannot be measured yet: {plain(exc)}")
            return
    if not ov.lots:
        st.info(plain(ov.headline))
        return
    _headline(ov)
    _cards(ov)
    with st.expander(f"All {len(ov.lots)} lots", expanded=len(ov.lots) > CARDS):
        _lots_table(ov)
    st.subheader("Scores per lot", anchor=False)
    split = len({lot.state_version_id for lot in ov.lots}) > 1
    st.caption("Each box is one lot (the middle half of its scores, the line its median); the "
               "grey band is the range of the reference scores, the red dash each lot's "
               "threshold, a red-filled box a lot in drift. Dotted lines mark a change of "
               "model or threshold."
               + (" Colours tell the model versions apart: each lot is drawn in the colour "
                  "of the version that scored it (legend)." if split else ""))
    _box_plot(ov)
    st.subheader("Control charts", anchor=False)
    metric = st.radio("Watch", list(METRIC_WORDS), format_func=METRIC_WORDS.__getitem__,
                      horizontal=True, key="drift-metric")
    if metric in ov.charts:
        _control_chart(ov, metric)
    else:
        st.info("Control charts need a few lots first.")
    st.subheader("Statistics per lot", anchor=False)
    _statistics(ov)


# --------------------------------------------------------------------------- adaptation


@st.cache_data(show_spinner=False, max_entries=8)
def _compare(project: str, before: int, after: int, lot: str | None,
             lot_key: str) -> dict[str, Any]:
    """Both versions score the validation images and the lot (``lot_key``: cache key)."""
    return compare_versions(context(), project, before, after, lot)


def _follow_update() -> None:
    """The running bank update (this session's, or any of the project's), redrawn every
    second; its outcome lands in LAST_UPDATE and the page reruns."""
    mine = st.session_state.get(UPDATE_JOB)
    if mine is not None:
        job = get_job(ctx, mine)
        if job is None or job["status"] not in ("queued", "running"):
            del st.session_state[UPDATE_JOB]
            if job is not None:
                st.session_state[LAST_UPDATE] = job
                if job["status"] == "done":
                    bank = job["result"] or {}
                    first = bank.get("first_parent", bank.get("parent"))  # online: k versions
                    if first is not None:
                        st.session_state[COMPARE] = (first, bank["version"])
            st.rerun()
    for job in list_jobs(ctx, name, kinds=["update_bank"], active=True):
        st.progress(min(max(float(job["progress"]), 0.0), 1.0),
                    text=f"Updating the model: {plain(job['stage'] or 'waiting for the worker')}"
                         f" · {job['progress']:.0%}")


def _submit(paths: list[str], force: bool, note: str) -> None:
    try:
        st.session_state[UPDATE_JOB] = start_update(ctx, name, paths, note=note,
                                                     force_suspect=force)
    except (ValueError, LookupError, OSError, RuntimeError) as exc:
        st.error(f"The model was not updated: {plain(exc)}")
        return
    st.session_state.pop(LAST_UPDATE, None)
    st.rerun()


def _outcome() -> None:
    job = st.session_state.get(LAST_UPDATE)
    if job is None:
        return
    if job["status"] == "done":
        bank = job["result"] or {}
        made = bank.get("versions") or [bank.get("version")]
        if bank.get("kind") == "online":
            plan = bank.get("plan") or {}
            text = (f"The model learned from the lot: {len(made)} new version(s) of "
                    f"{ONLINE_CHUNK} images each, the last one now in use, each with its own "
                    f"threshold (running mean + 3σ). "
                    f"{plain(bank.get('threshold_note', '')).capitalize()}. Not learned: "
                    f"{plan.get('in_band', 0)} image(s) in the review band, "
                    f"{plan.get('reviewed_defect', 0)} reviewed as defect.")
            if bank.get("stopped"):
                text += f" {plain(bank['stopped']).capitalize()}."
        else:
            text = (f"The model was updated: {len(bank.get('source_images', []))} good "
                    "image(s) added as a new version, now in use. "
                    f"{plain(bank.get('threshold_note', '')).capitalize()}.")
        st.success(text, icon=":material/task_alt:")
    elif job["status"] == "cancelled":
        st.info("The update was cancelled; the model is unchanged.")
    else:
        st.error(f"The model was not updated: {plain(job_error_words(job))}",
                 icon=":material/block:")


def _thumbs(rows: list[dict[str, Any]], limit: int = 12) -> None:
    shown = [(thumbnail(ctx.home, r["image_path"], side=96), r) for r in rows[:limit]]
    shown = [(data, r) for data, r in shown if data is not None]
    if shown:
        st.image([d for d, _ in shown], width=96,
                 caption=[f"{r['file']} · {r['normalized_score']:.2f}" for _, r in shown])


def _from_lot() -> None:
    with_goods = {lot["name"]: lot["good"] for lot in lots if lot["good"]}
    if not with_goods:
        st.info("The model called no image of any lot good, so there is nothing to pick from "
                "the lots. Upload a few good images instead (next tab).")
        return
    lot = st.selectbox("Lot", list(with_goods), key="adapt-lot",
                       format_func=lambda n: f"{n} ({with_goods[n]} called good)",
                       help="Lots with images the model called good; the newest first.")
    candidates = good_lot_images(ctx, name, lot)
    if not candidates:
        st.info("The model called no image of this lot good, so there is nothing to pick.")
        return
    by_sha = {r["sha256"]: r for r in candidates}
    st.caption(f"{len(candidates)} image(s) the model called good, the most clearly good "
               "first (the number is the score; 0.5 is the threshold).")
    _thumbs(candidates)
    picked = st.multiselect(
        "Good images to add", list(by_sha), key=f"adapt-pick-{lot}",
        format_func=lambda sha: (f"{by_sha[sha]['file']}"
                                 + (f" ({by_sha[sha]['folder']})" if by_sha[sha]["folder"]
                                    else "")
                                 + f" · score {by_sha[sha]['normalized_score']:.2f}"),
        placeholder="Choose a few images that you know are good")
    if picked:
        _thumbs([by_sha[sha] for sha in picked])
    force = st.checkbox("I checked them: they are good", key="adapt-force-lot",
                        help="An image the model scores as a defect is refused unless a "
                             "person confirms it is good; the version's note records it.")
    if st.button("Add to the model", type="primary", icon=":material/add_task:",
                 disabled=not picked, key="adapt-add-lot"):
        _submit([by_sha[sha]["image_path"] for sha in picked], force,
                f"{len(picked)} good image(s) from lot {lot}, picked on the Drift page")
    with st.container(border=True):
        _adapt_online(lot)


def _adapt_online(lot: str) -> None:
    """The online adaptation of one lot: what it would learn, then one button."""
    st.markdown("**Adapt from this lot automatically**")
    st.caption(
        "Learns the lot's images the model in use scored clearly normal (below the review "
        "band, never inside it, never one a person reviewed as defect) in chunks of "
        f"{ONLINE_CHUNK}, at most {ONLINE_CAP} per lot. Each chunk becomes a new version of "
        "kind online whose threshold is the mean + 3σ of the last "
        f"{ONLINE_WINDOW} normal scores. Nothing changes "
        "unless you click; every version can be rolled back.")
    try:
        plan = plan_online(ctx, name, lot)
    except (ValueError, LookupError) as exc:
        st.info(f"Not available for this lot: {plain(exc)}")
        return
    chunks = plan["chunks"]
    skipped = (f"{plan['in_band']} in the review band, {plan['reviewed_defect']} reviewed as "
               f"defect, {plan['already_learned']} already learned, {plan['waiting']} waiting "
               "for a full chunk"
               + (f", {plan['scored_with_other']} scored with another version"
                  if plan["scored_with_other"] else ""))
    if chunks:
        st.caption(
            f"This lot now: {len(chunks)} chunk(s) to learn "
            f"({sum(len(c.keys) for c in chunks)} images with a raw score below "
            f"{plan['band_low']:.4g}; the threshold is {plan['threshold']:.4g}). Not learned: "
            f"{skipped}. Threshold after the last chunk: {chunks[-1].threshold:.4g}.")
    else:
        st.caption(
            f"This lot now: 0 chunk(s) to learn, nothing to adapt to: fewer than "
            f"{ONLINE_CHUNK} images scored clearly normal (a raw score below "
            f"{plan['band_low']:.4g}; the threshold is {plan['threshold']:.4g}). Not learned: "
            f"{skipped}.")
    if st.button("Adapt from this lot", icon=":material/autorenew:", key="adapt-online",
                 disabled=not chunks):
        try:
            st.session_state[UPDATE_JOB] = start_online_update(ctx, name, lot)
        except (ValueError, LookupError, OSError, RuntimeError) as exc:
            st.error(f"The model was not updated: {plain(exc)}")
        else:
            st.session_state.pop(LAST_UPDATE, None)
            st.rerun()


def _from_upload() -> None:
    files = st.file_uploader("Good images", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"],
                             accept_multiple_files=True, key="adapt-upload")
    force = st.checkbox("I checked them: they are good", key="adapt-force-upload",
                        help="An image the model scores as a defect is refused unless a "
                             "person confirms it is good; the version's note records it.")
    if st.button("Add to the model", type="primary", icon=":material/add_task:",
                 disabled=not files, key="adapt-add-upload"):
        paths = save_uploads(ctx, name, [(f.name, f.getvalue()) for f in files or []])
        _submit([str(p) for p in paths], force,
                f"{len(paths)} uploaded good image(s), added on the Drift page")


def _comparison(rows: list[dict[str, Any]]) -> None:
    pair = st.session_state.get(COMPARE)
    by_version = {r["version"]: r for r in rows}
    if not pair or pair[0] not in by_version or pair[1] not in by_version:
        return
    before, after = pair
    lot = lots[0]["name"] if lots else None
    lot_key = str(lots[0]["last_scored"]) if lots else ""
    st.subheader(f"Before and after: {plain(by_version[before]['label'])} → "
                 f"{plain(by_version[after]['label'])}", anchor=False)
    with st.spinner("Scoring the validation images" + (f" and the last lot ({lot})" if lot else "")
                    + " with both versions…"):
        try:
            result = _compare(name, before, after, lot, lot_key)
        except (LookupError, ValueError, OSError) as exc:
            st.warning(f"The versions cannot be compared: {plain(exc)}")
            return
    _version_facts(result)
    words = {"validation": "validation images", "lot": f"last lot ({lot})"}
    st.dataframe(pd.DataFrame([{
        "images": words[s["set"]], "count": s["images"],
        "median score before": s["median_before"], "median score after": s["median_after"],
        "flagged before": s["flagged_before"], "flagged after": s["flagged_after"],
        "verdicts changed": s["changed"],
    } for s in result["summary"]]), hide_index=True, width="stretch",
        column_config={c: st.column_config.NumberColumn(format="%.3f")
                       for c in ("median score before", "median score after")})
    if result["rows"]:
        fig = go.Figure()
        for kind, colour in (("validation", "#2E8B57"), ("lot", LOT_COLOUR)):
            part = [r for r in result["rows"] if r["set"] == kind]
            if part:
                fig.add_trace(go.Scatter(
                    x=[r["before_score"] for r in part], y=[r["after_score"] for r in part],
                    mode="markers", name=words[kind], marker={"color": colour, "size": 9},
                    hovertext=[r["file"] for r in part]))
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="unchanged",
                                 line={"dash": "dot", "color": "#7F8C8D"}))
        fig.add_hline(y=0.5, line_dash="dash", line_color=ALERT_COLOUR)
        fig.add_vline(x=0.5, line_dash="dash", line_color=ALERT_COLOUR)
        fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                          xaxis_title="score before (0.5 = its threshold)",
                          yaxis_title="score after (0.5 = its threshold)")
        st.plotly_chart(fig, width="stretch")
    st.caption("Each point is one image scored by both versions. Below the dotted line: the "
               "new version finds it more normal. Across a red line: its verdict changed."
               + (f" {result['left_out']} image(s) the new version learned from are left "
                  "out." if result["left_out"] else ""))


def _version_facts(result: dict[str, Any]) -> None:
    """The two versions side by side: what they hold, their thresholds, what they learned."""
    facts = result.get("versions") or {}
    if not facts:
        return
    pair = [facts[v] for v in (result["before"], result["after"]) if v in facts]
    st.dataframe(pd.DataFrame([{
        "version": f["label"], "how": KIND_WORDS.get(f["kind"], f["kind"]),
        "patch vectors": f["vectors"], "images learned in all": f["images"],
        "learned in this version": len(f["learned"]), "threshold": f["threshold"],
        "threshold method": method_words(f["threshold_method"]),
    } for f in pair]), hide_index=True, width="stretch",
        column_config={
            "threshold": st.column_config.NumberColumn(format="%.4f"),
            "patch vectors": st.column_config.NumberColumn(
                help="What the model compares new parts with. A bank at its size limit keeps "
                     "its most useful patches, so an update can change them without "
                     "changing the count.")})
    added, removed = result.get("added") or [], result.get("removed") or []
    change = []
    if added:
        change.append(f"{len(added)} image(s) learned since: " + ", ".join(added[:12])
                      + (" …" if len(added) > 12 else ""))
    if removed:
        change.append(f"{len(removed)} image(s) no longer learned: " + ", ".join(removed[:12])
                      + (" …" if len(removed) > 12 else ""))
    if change:
        st.caption(plain(" · ".join(change)))
    with st.expander("Files each version learned"):
        for f in pair:
            st.markdown(f"**{plain(f['label'])}** ({len(f['learned'])} file(s))")
            st.caption(plain(", ".join(f["learned"]) or "none of its own"))


def _close_rollback() -> None:
    st.session_state.pop(ROLLBACK, None)


@st.dialog("Roll back the model?", on_dismiss=_close_rollback)
def _confirm_rollback(target: dict[str, Any], current: dict[str, Any]) -> None:
    st.markdown(
        f"**{plain(target['label'])}** becomes the version in use again, with its threshold "
        f"{fmt(target['threshold'], 4)}, instead of **{plain(current['label'])}**. Nothing "
        "is deleted: the rollback is a new version, and you can roll forward the same way. "
        "Lots scored from now on use it; lots already scored keep their verdicts.")
    yes, no = st.columns(2)
    if yes.button("Roll back", type="primary", icon=":material/undo:", key="rollback-yes"):
        try:
            rollback(ctx, name, target["version"], created_by="drift page")
        except (ValueError, LookupError) as exc:
            st.error(f"Not rolled back: {plain(exc)}")
            return
        _close_rollback()
        st.session_state.pop(LAST_UPDATE, None)
        st.toast(f"{target['label']} is in use again")
        st.rerun()
    if no.button("Cancel", key="rollback-no"):
        _close_rollback()
        st.rerun()


def _history(rows: list[dict[str, Any]]) -> None:
    st.subheader("Versions of the model", anchor=False)
    st.dataframe(pd.DataFrame([{
        "version": r["label"], "how": KIND_WORDS.get(r["kind"], r["kind"]),
        "from": r["parent_label"] or "", "created": r["created_at"],
        "threshold": r["threshold"], "images learned": r["images_added"],
        "in use": r["active"], "note": r["note"] or "",
    } for r in reversed(rows)]), hide_index=True, width="stretch",
        column_config={"created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                       "threshold": st.column_config.NumberColumn(format="%.4f"),
                       "images learned": st.column_config.NumberColumn(
                           help="The training images for a trained version, the new good "
                                "images for an update."),
                       "note": st.column_config.TextColumn(width="large")})
    current = next(r for r in rows if r["active"])
    others = [r for r in rows if not r["active"]]
    with_parent = [r for r in rows if r["parent"] is not None]
    left, right = st.columns(2)
    if with_parent:
        labels = {r["version"]: r for r in with_parent}
        chosen = left.selectbox("Compare a version with the one it came from",
                                list(reversed(list(labels))), key="compare-version",
                                format_func=lambda v: labels[v]["label"])
        if left.button("Compare", icon=":material/compare_arrows:", key="compare-go"):
            st.session_state[COMPARE] = (labels[chosen]["parent"], chosen)
    if others:
        targets = {r["version"]: r for r in others}
        back = right.selectbox("Roll back to", list(reversed(list(targets))),
                               key="rollback-version",
                               format_func=lambda v: f"{targets[v]['label']} "
                                                     f"({KIND_WORDS.get(targets[v]['kind'])})")
        if right.button(f"Roll back to {targets[back]['label']}…", icon=":material/undo:",
                        key="rollback-open"):
            st.session_state[ROLLBACK] = back
        if st.session_state.get(ROLLBACK) in targets:  # open until confirmed or dismissed
            _confirm_rollback(targets[st.session_state[ROLLBACK]], current)


def _adaptation_section() -> None:
    st.header("Update the model with new good images", anchor=False)
    st.caption("When good parts look different now (a new supplier, new lighting), teach the "
               "model a few of them instead of retraining. Each update is a new version with "
               "its threshold checked again on the validation images; the one before stays and "
               "you can roll back to it.")
    running = bool(st.session_state.get(UPDATE_JOB)) or bool(
        list_jobs(ctx, name, kinds=["update_bank"], active=True))
    st.fragment(_follow_update, run_every=1.0 if running else None)()
    _outcome()
    if lots:
        lot_tab, upload_tab = st.tabs(["Pick from a lot", "Upload images"])
        with lot_tab:
            _from_lot()
    else:
        upload_tab = st.container()
    with upload_tab:
        _from_upload()
    rows = versions(ctx, name)
    if rows:
        _comparison(rows)
        _history(rows)


_drift_section()
_adaptation_section()

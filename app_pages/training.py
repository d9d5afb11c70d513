"""Training: the recommended detector, the model choice and its few settings, one button, live
progress, history; a comparison of the models on this project's own images; export."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from services.inference.export import (
    FORMAT_TITLES,
    export_archive,
    export_job,
    export_target,
    request_export,
)
from services.training.compare import (
    comparison_job,
    comparison_result,
    comparison_rows,
    request_comparison,
)
from services.training.setup import (
    COLOUR_CHOICES,
    DEFAULT_MODEL,
    IMAGE_SIZE_RANGE,
    IMAGE_SIZE_STEP,
    SEED_MAX,
    STUCK_QUEUED_S,
    STUCK_RUNNING_S,
    TRAINING_RANGES,
    active_runs,
    cancel,
    run_history,
    start_training,
    training_setup,
)
from services.wording import GLOSSARY
from ui.common import (
    AUGMENTATION_PAGE,
    DATASETS_PAGE,
    EVALUATION_PAGE,
    context,
    need_project,
    plain,
    with_project,
)
from ui.jobs import ACTIVE_JOB, job_panel

ctx = context()
name = need_project()
if name is None:
    st.stop()

st.title(f"Training · {plain(name)}")
setup = training_setup(ctx, name)

if not setup.can_train:
    st.warning(
        "This project has no good training images yet. A model learns what a good part looks "
        "like, so it needs at least one image in train/good/ (or good/)."
    )
    st.page_link(DATASETS_PAGE, label="Add images on the Datasets page",
                 icon=":material/photo_library:", query_params=with_project(name))
    st.stop()

# --------------------------------------------------------------------------- recommendation
with st.container(border=True):
    st.markdown(f"**Recommended model: {setup.title}**")
    for reason in setup.reasons:
        st.markdown(f"- {reason}")

# --------------------------------------------------------------------------- model
MODEL_KEY = "tr_model"  # UI state only: which model the form shows ("Use" below sets it)
choices = {m.name: m for m in setup.models}
if st.session_state.get(MODEL_KEY) not in choices:
    st.session_state.pop(MODEL_KEY, None)  # a model this version no longer offers
algorithm = st.selectbox(
    "Model", list(choices), key=MODEL_KEY,
    format_func=lambda n: choices[n].title
    + (" (recommended)" if n == setup.models[0].name else "")
    + (" — needs network" if choices[n].needs_network else ""),
    help="Recommended first: the pick of the last comparison below when there is one, "
         "otherwise the rule of thumb above.",
)
choice = choices[algorithm]
st.caption(choice.description)
if choice.needs_network:
    st.warning("This model downloads weights from the internet when it is built. On a "
               "computer without internet access the training will fail at once.")
if choice.slow_without_gpu:
    st.warning("Without a graphics card (GPU) this model trains for tens of minutes or more: "
               "it learns two networks from scratch.")


def _key(base: str) -> str:
    """Widget keys per model, so each model's own defaults show (Kensa's keep their names)."""
    return base if algorithm == DEFAULT_MODEL else f"{base}_{algorithm}"


# --------------------------------------------------------------------------- parameters
st.subheader("Settings", anchor=False)
st.caption("The defaults suit most parts. Change them only when you know why.")
left, right = st.columns(2)
with left:
    use_all = st.radio(
        "Good images to learn from",
        ["all", "some"],
        format_func=lambda v: (setup.all_goods_words if v == "all"
                               else "A chosen number (to see how few are enough)"),
        key="tr_use_all",
    )
    shots: int | None = None
    if use_all == "some":
        shots = int(st.number_input(
            "Number of good images", min_value=1, max_value=max(1, setup.n_good_train),
            value=min(8, setup.n_good_train), step=1, key="tr_shots",
            help="Which ones is decided by the seed below. The others are kept aside to check "
                 "the model and to choose the threshold.",
        ))
    seed = int(st.number_input(
        "Seed", min_value=0, max_value=SEED_MAX, value=0, step=1, key="tr_seed",
        help="Same seed, same images, same model: use it to repeat a run exactly, or change "
             "it to see how much the result depends on which images were picked.",
    ))
    extra: dict[str, Any] = {}
    if choice.has("epochs"):
        lo, hi = TRAINING_RANGES["epochs"]
        extra["epochs"] = int(st.number_input(
            "Epochs", min_value=lo, max_value=hi, value=int(choice.defaults["epochs"]), step=1,
            key=_key("tr_epochs"),
            help="How many times the model goes through all the good images while it learns. "
                 "More epochs learn more but take longer; training time grows with them."))
    if choice.has("batch_size"):
        lo, hi = TRAINING_RANGES["batch_size"]
        extra["batch_size"] = int(st.number_input(
            "Batch size", min_value=lo, max_value=hi, value=int(choice.defaults["batch_size"]),
            step=1, key=_key("tr_batch"),
            help="Images the model looks at in one step. Larger batches need more memory; "
                 "lower it if training runs out of memory."))
    if choice.has("patience"):
        lo, hi = TRAINING_RANGES["patience"]
        extra["patience"] = int(st.number_input(
            "Early stopping (epochs without improvement)", min_value=lo, max_value=hi,
            value=int(choice.defaults["patience"]), step=1, key=_key("tr_patience"),
            help="Stop training once the model has not improved for this many epochs, "
                 "which saves time when it has learned all it can. 0 keeps it off: all "
                 "epochs run."))
backbone, image_size = None, None
colour, any_angle = "auto", False
with right:
    if choice.has("image_size"):
        lo, hi = IMAGE_SIZE_RANGE
        image_size = int(st.slider(
            "Image size (pixels, longer side)", min_value=lo, max_value=hi,
            value=min(max(int(choice.defaults["image_size"]), lo), hi), step=IMAGE_SIZE_STEP,
            key=_key("tr_size"),
            help="Images are scaled to this size before the model looks at them. Larger sizes "
                 "see smaller defects but train and inspect more slowly and need more "
                 "memory.",
        ))
    if choice.has("backbone"):
        names = [b.name for b in setup.backbones]
        by_name = {b.name: b for b in setup.backbones}
        default = str(choice.defaults.get("backbone", setup.default_backbone))
        backbone = st.selectbox(
            "Backbone (the pretrained network that describes image patches)",
            names,
            index=names.index(default) if default in names else 0,
            format_func=lambda n: n + (" — needs network" if by_name[n].needs_network
                                       else ""),
            key=_key("tr_backbone"),
        )
        st.caption(by_name[backbone].description)
        if by_name[backbone].needs_network:
            st.warning("This backbone downloads its weights from the internet the first "
                       "time. On a computer without internet access the training will fail.")
    if choice.has("colour"):
        colour = st.radio(
            "Colour", list(COLOUR_CHOICES), format_func=COLOUR_CHOICES.get, key="tr_colour",
            help="Some products come in several colours that are all good. 'Decide' compares "
                 "the colours of the project's good images (those the model learns from and "
                 "those kept back to set the threshold): when they differ, the model looks at "
                 "brightness only, so a good part in a colour it has not seen is not "
                 "rejected; when they agree (or there is one good image), a discoloured part "
                 "still counts as a defect.",
        )
    if choice.has("views"):
        any_angle = st.checkbox(
            "Parts can lie at any angle", key="tr_any_angle",
            help="For parts placed loosely under the camera (screws, nuts, washers): the "
                 "model also remembers the good images turned in 30° steps, so a turned good "
                 "part is not rejected. Leave it off when parts are always placed the same "
                 "way: a part lying wrongly is then caught, and training is faster (about 3 "
                 "times less work).",
        )

st.caption(setup.augmentation)
st.page_link(AUGMENTATION_PAGE, label="Choose augmentation on the Augmentation page",
             icon=":material/auto_awesome:", query_params=with_project(name))

busy = bool(setup.active)
blocked = setup.shortfall(shots)  # one sentence; the service refuses with the same one
if blocked:
    st.warning(blocked)
if st.button("Train", type="primary", icon=":material/play_arrow:", disabled=busy or bool(blocked),
             help="Training runs in the background: you can leave this page meanwhile."):
    try:
        run_id = start_training(ctx, name, shots=shots, seed=seed, algorithm=algorithm,
                                params=extra, backbone=backbone, image_size=image_size,
                                colour=colour, any_angle=any_angle)
    except (ValueError, LookupError, OSError) as exc:
        st.error(f"Training could not start: {plain(exc)}")
    else:
        st.toast("Training started")
        st.rerun()
if busy:
    st.caption("A training is running for this project; wait for it or cancel it below.")
elif not blocked and setup.duration and algorithm == DEFAULT_MODEL:
    st.caption(setup.duration)  # measured for Kensa's model; others vary too much to guess


# --------------------------------------------------------------------------- live progress
def _live(watched: tuple[int, ...]) -> None:
    """Progress panel and run history, redrawn every second from the database while a run
    is going (the row is the state, so a page reload loses nothing)."""
    runs = active_runs(ctx, name)
    if watched and not runs:
        st.rerun()  # a watched run ended: redraw the whole page (Train button, links)
    for run in runs:
        with st.container(border=True):
            stage = run["stage"] or ("waiting for the worker" if run["status"] == "queued"
                                     else "starting")
            retry = (f" (try {run['attempts']})" if run.get("attempts", 0) > 1 else "")
            st.markdown(f"**Training {run['label']}** — {run['status']}{retry}")
            if run.get("cancel_requested"):
                st.caption("Cancel requested: the worker stops at its next step.")
            st.progress(min(max(float(run["progress"]), 0.0), 1.0),
                        text=f"{stage} · {run['progress']:.0%}"
                        + (f" · {run['eta']}" if run.get("eta") else ""))
            if run["waiting_s"] > STUCK_QUEUED_S:
                st.warning(
                    f"The background worker has not started after {run['waiting_s']:.0f} s: "
                    "it may have failed to start (its log is jobs/worker.log under the Kensa "
                    "data folder), or all workers are busy. Cancel and try again."
                )
            if run["silent_s"] > STUCK_RUNNING_S:
                st.warning(
                    f"No sign of life from the background worker for "
                    f"{run['silent_s']:.0f} s: it has probably stopped (for example, "
                    "out of memory) and the run will be marked failed. Its log is "
                    "jobs/worker.log under the Kensa data folder."
                )
            if st.button("Cancel", key=f"cancel-{run['id']}", icon=":material/stop:"):
                cancel(ctx, run["id"])
                st.rerun()

    st.subheader("Run history", anchor=False)
    history = run_history(ctx, name)
    if not history:
        st.info("No training yet. Press **Train** to fit the first model.")
        return
    latest = history[0]
    if latest["status"] == "done":
        st.success(f"Latest model, {latest['model']}, is ready.")
        st.page_link(EVALUATION_PAGE, label="See how well it works on the Evaluation page",
                     icon=":material/analytics:", query_params=with_project(name))
    elif latest["status"] == "failed":
        st.error(f"Training {latest['model']} failed: {plain(latest['note'] or 'no details')}")
    st.dataframe(
        pd.DataFrame(history), hide_index=True, width="stretch",
        column_config={
            "model": st.column_config.TextColumn(width="small"),
            "status": st.column_config.TextColumn(width="small"),
            "started": st.column_config.DatetimeColumn(format="MM-DD HH:mm", width="small"),
            "took": st.column_config.TextColumn(width="small"),
            "good images learned": st.column_config.TextColumn("images", width="small",
                                                               help="Good images learned from"),
            **{col: st.column_config.TextColumn(short, width="small", help=GLOSSARY[term])
               for col, short, term in (("image AUROC", "AUROC", "AUROC"),
                                        ("AP", "AP", "AP (average precision)"),
                                        ("F1", "F1", "F1"),
                                        ("pixel AUROC", "pixel", "Pixel AUROC"),
                                        ("AUPRO", "AUPRO", "AUPRO"))},
            "threshold": st.column_config.TextColumn(width="small", help=GLOSSARY["Threshold"]),
            "settings": st.column_config.TextColumn(width="medium"),
        },
    )
    st.caption("AUROC: 1.0 separates good from defect perfectly, 0.5 is guessing. "
               "Scores are measured on images the model did not learn from.")


watched = tuple(run["id"] for run in setup.active)
st.fragment(_live, run_every=1.0 if watched else None)(watched)


# --------------------------------------------------------------------------- compare models
def _use(model: str) -> None:
    st.session_state[MODEL_KEY] = model  # before the selectbox is drawn again: allowed


def _compare_section() -> None:
    """Run the candidates on this project's held-out images as a job; draw the newest
    result: the pick and why first, then the table, then a button to use the pick."""
    st.subheader("Compare models", anchor=False)
    st.markdown("The rule of thumb above is a starting point; a measurement on your own "
                "images decides. Each model learns from the same good images a training "
                "with the settings above would, with its default settings, and is checked "
                "on the same held-out images.")
    offline = [m.name for m in setup.models
               if not m.needs_network and not m.slow_without_gpu]
    picked = st.multiselect(
        "Models to compare", list(choices), default=offline, key="tr_compare_models",
        format_func=lambda n: choices[n].title
        + (" — needs network" if choices[n].needs_network else "")
        + (" — slow without a GPU" if choices[n].slow_without_gpu else ""),
        help="The models that work offline are chosen by default, except those that take "
             "tens of minutes without a GPU (add them to compare them too). Each one runs in "
             "its own process, one after the other; models trained for epochs take minutes.")
    job = comparison_job(ctx, name)
    running = job is not None and job["status"] in ACTIVE_JOB
    if st.button("Compare models", icon=":material/compare_arrows:",
                 disabled=running or not picked or bool(blocked), key="tr_compare",
                 help="Runs in the background; nothing is trained for keeps and no model is "
                      "added to the history."):
        try:
            request_comparison(ctx, name, candidates=picked, shots=shots, seed=seed)
        except (ValueError, LookupError, OSError, RuntimeError) as exc:
            st.error(f"The comparison cannot start: {plain(exc)}")
        else:
            st.rerun()

    def _panel() -> None:
        job_panel(ctx, comparison_job(ctx, name), title="Comparison", noun="the comparison",
                  stops="the comparison", key="tr_compare", was_running=running)

    st.fragment(_panel, run_every=1.0 if running else None)()
    result = comparison_result(ctx, name)
    if result is None:
        if not running:
            st.caption("No comparison yet.")
        return
    if result["pick"]:  # the reason starts with the pick's name
        st.success(plain(result["reason"]), icon=":material/star:")
    else:
        st.warning(plain(result["reason"]))
    table = pd.DataFrame(comparison_rows(result))
    st.dataframe(
        table.style.apply(lambda row: ["font-weight: bold; background-color: #e8f5e9"
                                       if row["pick"] else "" for _ in row], axis=1),
        hide_index=True, width="stretch",
        column_config={
            "pick": st.column_config.TextColumn("", width="small"),
            **{col: st.column_config.TextColumn(short, width="small", help=GLOSSARY[term])
               for col, short, term in (("image AUROC", "AUROC", "AUROC"),
                                        ("pixel AUROC", "pixel", "Pixel AUROC"),
                                        ("F1", "F1", "F1"))},
            "fit (s)": st.column_config.TextColumn(width="small",
                                                   help="Seconds to learn the good images"),
            # no width: a "small" column cut these headers to "ms per imag" / "memory (MB"
            "ms per image": st.column_config.TextColumn(
                help="Milliseconds to score one image, scoring only"),
            "peak memory (MB)": st.column_config.TextColumn(
                "memory (MB)",
                help="Peak memory of the model's own process, Python and PyTorch included"),
            "note": st.column_config.TextColumn(width="medium"),
        },
    )
    held = result["n_held_out"]
    st.caption(
        f"Learned from {result['n_train']} good images; checked on {held['good']} held-out "
        f"good and {held['defect']} defect images"
        + (" (synthetic defects painted into held-out good images, as no defect image is "
           "held out)" if result["synthetic"] else "")
        + f", seed {result['seed']}. A comparison adds no model to the history.")
    if result["pick"] and result["pick"] in choices and result["pick"] != algorithm:
        st.button(f"Use {result['pick_title']}", icon=":material/check:",
                  key="tr_compare_use", on_click=_use, args=(result["pick"],),
                  help="Chooses it in the Model box above; then press Train.")


_compare_section()


# --------------------------------------------------------------------------- export
def _export_section() -> None:
    """Export the newest finished model as files for a production PC (a job: tens of
    seconds), then download them as a zip with the parity figure in words."""
    st.subheader("Export the model", anchor=False)
    target = export_target(ctx, name)
    if target is None:
        st.caption("Once a training has finished, its model can be exported here.")
        return
    if not target["exportable"]:
        st.info(f"{target['label']} is {target['algorithm']}, which cannot be exported; Kensa "
                "PatchCore and the offline anomalib models can.")
        return
    mv_id, label = target["model_version_id"], target["label"]
    st.markdown(f"Files of **{label}** for inspection outside Kensa: OpenVINO for Intel CPUs, "
                "ONNX for other runtimes. Before they are offered, the files are checked on "
                "the images held out from training: their scores must match Kensa's within "
                "0.001 (on the 0–1 scale where the threshold is 0.5), or the export is refused.")
    left, right = st.columns(2)
    fmt = left.radio("Format", list(FORMAT_TITLES), format_func=FORMAT_TITLES.get,
                     horizontal=True, key="tr_export_format")
    fp16 = right.checkbox("FP16 (half-size OpenVINO file)", key="tr_export_fp16",
                          disabled=fmt != "openvino",
                          help="Weights and memory bank in half precision: about half the "
                               "size; refused like any export when its scores move too much.")
    job = export_job(ctx, name, mv_id)
    running = job is not None and job["status"] in ACTIVE_JOB
    if st.button("Export", icon=":material/download:", disabled=running,
                 key=f"tr_export_{mv_id}",
                 help="Runs in the background (about half a minute); nothing is changed."):
        try:
            request_export(ctx, name, fmt, fp16=fp16 and fmt == "openvino",
                           model_version_id=mv_id)
        except (ValueError, LookupError, OSError) as exc:
            st.error(f"The export cannot start: {plain(exc)}")
        else:
            st.rerun()

    def _panel() -> None:
        now = export_job(ctx, name, mv_id)
        job_panel(ctx, now, title="Export", noun="the export", stops="the export",
                  key="tr_export", was_running=running)
        if now is not None and now["status"] == "done" and not running:
            result = now["result"] or {}
            title = FORMAT_TITLES.get(result.get("format"), "?") + (
                " FP16" if result.get("fp16") else "")
            st.success(f"{title} export of {label}: on {result['n_images']} held-out "
                       f"image(s) its scores differ from Kensa's by at most "
                       f"{result['parity_max_abs_diff']:.1e} (allowed: 1e-3).")
            try:
                file_name, data = export_archive(ctx, result)
            except (ValueError, OSError) as exc:
                st.warning(plain(exc))
            else:
                st.download_button(f"Download the {title} files (zip, "
                                   f"{len(data) / 2**20:.1f} MB)", data, file_name=file_name,
                                   mime="application/zip", icon=":material/download:",
                                   key=f"tr_export_zip_{now['id']}")

    st.fragment(_panel, run_every=1.0 if running else None)()


_export_section()

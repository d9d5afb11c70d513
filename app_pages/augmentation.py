"""Augmentation: try changes (turns, light, blur, synthetic defects) on the project's own images,
save them as presets, and choose the one training uses.

Widgets and pictures only. Every widget is drawn from the engine's schema (through
services.augmentation.schema): one checkbox and one "chance" slider per transform, one widget
per parameter, so a transform added to the engine shows here unchanged. The widget values are
UI state in ``st.session_state``; they are mirrored in one dict (``VALUES_KEY``) because
Streamlit forgets a widget's value when it is not drawn in a run (a transform switched off, or
a visit to another page), and loading a preset writes the widget keys in a callback, before the
widgets are drawn.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

import streamlit as st

from services.augmentation.presets import (
    PresetError,
    delete_preset,
    get_preset,
    list_presets,
    load_config,
    mark_for_training,
    rename_preset,
    save_preset,
    training_preset,
)
from services.augmentation.preview import PreviewTile, preview_images, render_preview
from services.augmentation.schema import (
    TRANSFORMS,
    AugmentConfig,
    AugmentConfigError,
    ParamSpec,
    TransformSpec,
    describe_applied,
    groups,
    overlay,
    validate_config,
)
from ui.common import DATASETS_PAGE, context, need_project, plain, with_project

N_IMAGES = 12  # tiles in the grid
SAMPLE_SEED = 0  # which of the project's images are shown: the same ones on every visit
LONG_SIDE = 512  # px: the preview images' longer side
TILES_PER_ROW = 1  # before | after | what was drawn: pictures large enough to see a 1 % stain
MAX_SEED = 2**31 - 1

SEED_KEY = "aug_seed"
MASKS_KEY = "aug_masks"
PRESET_KEY = "aug_preset"
NAME_KEY = "aug_new_name"
RENAME_KEY = "aug_rename"
VALUES_KEY = "_aug_values"  # every transform widget's value, kept across runs and pages
MSG_KEY = "_aug_msg"  # (kind, text) of the last preset action, shown once

ctx = context()
name = need_project()
if name is None:
    st.stop()


# --------------------------------------------------------------------------- widget keys
def _on_key(spec: TransformSpec) -> str:
    return f"aug_on_{spec.name}"


def _p_key(spec: TransformSpec) -> str:
    return f"aug_p_{spec.name}"


def _param_key(spec: TransformSpec, param: ParamSpec) -> str:
    return f"aug_{spec.name}_{param.name}"


def _widget_value(param: ParamSpec, value: Any) -> Any:
    """A stored value as its widget holds it: ranges as tuples, numbers of the slider's type."""
    if param.kind == "int":
        return int(value)
    if param.kind == "float":
        return float(value)
    if param.kind == "int_range":
        return tuple(int(v) for v in value)
    if param.kind == "float_range":
        return tuple(float(v) for v in value)
    if param.kind == "bool":
        return bool(value)
    return value


def _defaults() -> dict[str, Any]:
    """Every transform off, at the engine's defaults; seed 0."""
    values: dict[str, Any] = {SEED_KEY: 0}
    for spec in TRANSFORMS.values():
        values[_on_key(spec)] = False
        values[_p_key(spec)] = float(spec.default_p)
        for param in spec.params:
            values[_param_key(spec, param)] = _widget_value(param, param.default)
    return values


def _restore() -> None:
    """Put back the values Streamlit dropped (widgets not drawn last run, another page)."""
    kept = st.session_state.setdefault(VALUES_KEY, {})
    for key, default in _defaults().items():
        if key not in st.session_state:
            st.session_state[key] = kept.get(key, default)


def _keep() -> None:
    st.session_state[VALUES_KEY] = {key: st.session_state[key] for key in _defaults()
                                    if key in st.session_state}


def _fill(config: AugmentConfig) -> None:
    """The widgets set to ``config`` (called from callbacks, before the widgets are drawn)."""
    values = _defaults()
    values[SEED_KEY] = int(config.seed)
    for step in config.transforms:
        spec = TRANSFORMS[step.name]
        values[_on_key(spec)] = True
        values[_p_key(spec)] = float(step.p)
        for param in spec.params:
            if param.name in step.params:
                values[_param_key(spec, param)] = _widget_value(param, step.params[param.name])
    for key, value in values.items():
        st.session_state[key] = value
    st.session_state[VALUES_KEY] = values


def _raw_config() -> dict[str, Any]:
    """The widgets as the engine's config JSON (validated by the engine, not here)."""
    steps = []
    for spec in TRANSFORMS.values():
        if st.session_state[_on_key(spec)]:
            params = {}
            for param in spec.params:
                value = st.session_state[_param_key(spec, param)]
                params[param.name] = list(value) if isinstance(value, tuple) else value
            steps.append({"name": spec.name, "p": st.session_state[_p_key(spec)],
                          "params": params})
    return {"version": 1, "seed": int(st.session_state[SEED_KEY]), "transforms": steps}


# --------------------------------------------------------------------------- callbacks
def _say(kind: str, text: str) -> None:
    st.session_state[MSG_KEY] = (kind, text)


def _load(project: str) -> None:
    chosen = st.session_state.get(PRESET_KEY)
    if not chosen:
        return
    try:
        _fill(load_config(get_preset(context(), project, chosen)))
    except (PresetError, AugmentConfigError) as exc:
        _say("error", f"“{chosen}” cannot be loaded: {exc}")
    else:
        _say("success", f"Loaded “{chosen}”. Move the sliders to try changes; Save keeps them.")


def _save(project: str) -> None:
    new = (st.session_state.get(NAME_KEY) or "").strip()
    if not new:
        _say("error", "Type a name for these settings first.")
        return
    try:
        save_preset(context(), project, new, _raw_config())
    except (PresetError, AugmentConfigError) as exc:
        _say("error", f"Not saved: {exc}")
        return
    st.session_state[PRESET_KEY] = new
    st.session_state[NAME_KEY] = ""
    _say("success", f"Saved as “{new}”.")


def _rename(project: str) -> None:
    old, new = st.session_state.get(PRESET_KEY), (st.session_state.get(RENAME_KEY) or "").strip()
    if not old or not new:
        _say("error", "Choose saved settings and type their new name first.")
        return
    try:
        rename_preset(context(), project, old, new)
    except PresetError as exc:
        _say("error", f"Not renamed: {exc}")
        return
    st.session_state[PRESET_KEY] = new
    st.session_state[RENAME_KEY] = ""
    _say("success", f"Renamed “{old}” to “{new}”.")


def _delete(project: str) -> None:
    chosen = st.session_state.get(PRESET_KEY)
    if not chosen:
        return
    try:
        delete_preset(context(), project, chosen)
    except PresetError as exc:
        _say("error", f"Not deleted: {exc}")
        return
    st.session_state[PRESET_KEY] = None
    _say("success", f"Deleted “{chosen}”. The sliders keep its values until you change them.")


def _mark(project: str, chosen: str | None) -> None:
    try:
        mark_for_training(context(), project, chosen)
    except PresetError as exc:
        _say("error", str(exc))
        return
    _say("success", f"Training now uses “{chosen}”." if chosen
         else "Training no longer adds augmented images.")


def _reshuffle() -> None:
    """A new seed: other random draws, the same settings."""
    st.session_state[SEED_KEY] = secrets.randbelow(MAX_SEED)


# --------------------------------------------------------------------------- cached data
@st.cache_data(show_spinner="Reading the project's images…", max_entries=8, ttl=3600)
def _images(home: str, project: str, n: int, seed: int) -> list[tuple[str, str, Any, Any]]:
    """The preview images (decoded and shrunk once per data directory, project and sample)."""
    del home  # part of the key only: tests point KENSA_HOME elsewhere
    return preview_images(context(), project, n=n, seed=seed, long_side=LONG_SIDE)


@st.cache_data(show_spinner=False, max_entries=32, ttl=3600)
def _render(home: str, project: str, config_json: str) -> list[PreviewTile]:
    """The grid for one configuration; a rerun without a change (a preset click, the mask
    toggle) draws it again without augmenting again."""
    images = _images(home, project, N_IMAGES, SAMPLE_SEED)
    return render_preview(images, json.loads(config_json))


# --------------------------------------------------------------------------- widgets
def _param_widget(spec: TransformSpec, param: ParamSpec) -> None:
    key, label, help_ = _param_key(spec, param), plain(param.title), plain(param.help) or None
    if param.kind in ("float", "int", "float_range", "int_range"):
        cast = int if param.kind.startswith("int") else float
        if param.min is None or param.max is None:  # open range: typed, not slid
            if param.kind.endswith("range"):
                raise ValueError(f"{spec.name}.{param.name}: a range needs a min and a max")
            st.number_input(label, key=key, help=help_, step=cast(param.step or 1))
            return
        kwargs: dict[str, Any] = {"min_value": cast(param.min), "max_value": cast(param.max)}
        if param.step is not None:
            kwargs["step"] = cast(param.step)
            if cast is float:  # as many decimals as the step has (0.0005 shows as 0.0005)
                kwargs["format"] = f"%.{max(0, -math.floor(math.log10(param.step)))}f"
        st.slider(label, key=key, help=help_, **kwargs)
    elif param.kind == "choice":
        st.selectbox(label, list(param.choices), key=key, help=help_, format_func=str)
    else:
        st.checkbox(label, key=key, help=help_)


def _transform(spec: TransformSpec) -> None:
    on = st.checkbox(plain(spec.title), key=_on_key(spec), help=plain(spec.help))
    if not on:
        return
    with st.container(border=True):
        st.slider("Chance", 0.0, 1.0, step=0.05, key=_p_key(spec),
                  help="How often this change is applied: 1 = to every image, 0.5 = to about "
                       "half of them.")
        for param in spec.params:
            _param_widget(spec, param)


def _controls() -> None:
    st.markdown("**Changes to try**")
    for group, title, specs in groups():
        active = sum(bool(st.session_state[_on_key(s)]) for s in specs)
        label = f"{title} ({active} on)" if active else title
        with st.expander(label, expanded=group == "geometric" or active > 0):
            if group == "synthetic":
                st.caption("Draws a made-up defect (a stain, a cut-and-pasted patch, a scratch) "
                           "and its outline. For trying detection only: training never adds "
                           "them to the good images.")
            for spec in specs:
                _transform(spec)
    seed_col, shuffle_col = st.columns([2, 1], vertical_alignment="bottom")
    seed_col.number_input(
        "Random seed", min_value=0, max_value=MAX_SEED, step=1, key=SEED_KEY,
        help="The same seed gives the same random changes every time, so a preview can be "
             "repeated. Reshuffle picks another one.")
    shuffle_col.button("Reshuffle", icon=":material/shuffle:", on_click=_reshuffle,
                       width="stretch", help="New random draws with the same settings.")


def _presets(project: str, config_error: str | None) -> None:
    presets = list_presets(ctx, project)
    names = [p["name"] for p in presets]
    marked = next((p for p in presets if p["for_training"]), None)
    with st.container(border=True):
        st.markdown("**Saved settings (presets)**")
        message = st.session_state.pop(MSG_KEY, None)
        if message is not None:
            (st.error if message[0] == "error" else st.success)(plain(message[1]))
        if marked is not None:
            st.markdown(f":material/model_training: Training uses **{plain(marked['name'])}**.")
            _check_training(project)
        else:
            st.markdown("Training uses no augmentation.")
        st.caption("When a preset is marked for training, training adds augmented copies of "
                   "each good image, made with its settings. Synthetic defects are never added "
                   "to training: the model must only learn what good parts look like.")
        if st.session_state.get(PRESET_KEY) not in names:
            st.session_state[PRESET_KEY] = None
        if names:
            st.selectbox(
                "Saved settings", names, key=PRESET_KEY, index=None,
                placeholder="Choose saved settings to load them",
                on_change=_load, args=(project,),
                format_func=lambda n: f"{n} (used for training)"
                if marked is not None and n == marked["name"] else n)
            chosen = st.session_state.get(PRESET_KEY)
            if chosen:
                summary = next(p.get("summary") for p in presets if p["name"] == chosen)
                if summary:
                    st.caption(plain(summary))
            b1, b2 = st.columns(2)
            b1.button("Load", on_click=_load, args=(project,), disabled=not chosen,
                      width="stretch", icon=":material/upload:",
                      help="Set the sliders to these saved settings again.")
            b2.button("Use for training", on_click=_mark, args=(project, chosen),
                      disabled=not chosen or (marked is not None and chosen == marked["name"]),
                      width="stretch", icon=":material/model_training:",
                      help="Training adds augmented copies of the good images made with "
                           "these settings.")
            b3, b4 = st.columns(2)
            with b3.popover("Rename", disabled=not chosen, width="stretch",
                            icon=":material/edit:"):
                st.text_input("New name", key=RENAME_KEY, max_chars=80)
                st.button("Rename", key="aug_rename_go", on_click=_rename, args=(project,))
            with b4.popover("Delete", disabled=not chosen, width="stretch",
                            icon=":material/delete:"):
                st.caption("Trainings that used these settings keep their own copy of them.")
                st.button("Delete for good", key="aug_delete_go", on_click=_delete,
                          args=(project,), type="primary")
            if marked is not None:
                st.button("Stop using augmentation for training", on_click=_mark,
                          args=(project, None))
        save_col, button_col = st.columns([2, 1], vertical_alignment="bottom")
        save_col.text_input("Save the current settings as", key=NAME_KEY, max_chars=80,
                            placeholder="e.g. small turns and light",
                            help="The same name again replaces the saved settings.")
        button_col.button("Save", icon=":material/save:", on_click=_save, args=(project,),
                          disabled=config_error is not None, width="stretch")


def _check_training(project: str) -> None:
    """A stored preset the engine refuses (edited by hand, an older version) is said in words,
    with the field named, rather than failing the training later."""
    stored = training_preset(ctx, project)
    if stored is None:
        return
    try:
        load_config(stored)
    except (PresetError, AugmentConfigError) as exc:
        st.error(f"These settings cannot be used: {plain(exc)} Load or save other settings "
                 "and mark them for training.", icon=":material/error:")


# --------------------------------------------------------------------------- grid
def _tile(tile: PreviewTile, masks: bool, changes: bool) -> None:
    before = overlay(tile.before, tile.mask_before if masks else None)
    after = overlay(tile.after, tile.mask_after if masks else None)
    with st.container(border=True):
        # what was drawn goes beside the pair (nothing on: nothing to say, 12 times); the
        # pictures keep their size either way
        left, right, words = st.columns(3)
        left.image(before, caption=f"Before · {plain(tile.label)}", width="stretch",
                   output_format="JPEG")
        right.image(after, caption="After", width="stretch", output_format="JPEG")
        if changes:
            words.caption(plain(describe_applied(tile.applied)))


@st.fragment
def _grid(project: str, config: AugmentConfig) -> None:
    """The before/after pairs; the mask switch reruns only this part."""
    masks = st.toggle("Show defect outlines", value=True, key=MASKS_KEY,
                      help="Tint and outline the defect of each image: the real defects of "
                           "the project's defect images and the synthetic ones drawn here.")
    tiles = _render(str(ctx.home), project, json.dumps(config.to_json(), sort_keys=True))
    for start in range(0, len(tiles), TILES_PER_ROW):
        for column, tile in zip(st.columns(TILES_PER_ROW), tiles[start:start + TILES_PER_ROW],
                                strict=False):
            with column:
                _tile(tile, masks, bool(config.transforms))


# --------------------------------------------------------------------------- page
st.title(f"Augmentation · {plain(name)}")
st.caption("Augmentation makes changed copies of the images (turned, brighter, blurred…) so a "
           "model learns from few photos what a good part can look like. Try changes on this "
           "project's images here; the files themselves are never changed.")

images = _images(str(ctx.home), name, N_IMAGES, SAMPLE_SEED)
if not images:
    st.info("This project has no images yet, so there is nothing to preview. Add images "
            "first.")
    st.page_link(DATASETS_PAGE, label="Add images on the Datasets page",
                 icon=":material/photo_library:", query_params=with_project(name))
    st.stop()

_restore()
controls, preview = st.columns([2, 3], gap="large")
with controls:
    presets_box = st.container()  # on top, filled once the settings below are checked
    _controls()
_keep()

config: AugmentConfig | None = None
config_error: str | None = None
try:
    config = validate_config(_raw_config())
except AugmentConfigError as exc:
    config_error = str(exc)

with presets_box:
    _presets(name, config_error)

with preview:
    st.markdown(f"**Preview on {len(images)} of this project's images**")
    if config is None:
        st.error(f"These settings cannot be used: {plain(config_error)}",
                 icon=":material/error:")
    else:
        if not config.transforms:
            st.caption("No change is switched on yet: pick one on the left, the pictures "
                       "follow.")
        _grid(name, config)

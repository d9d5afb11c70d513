"""Augmentation presets: named settings of a project, and the one training uses.

A preset is stored as ``engine.augment.serialize`` output: Kensa's own JSON (what is validated
and loaded back) plus the albumentations dict (so the pipeline can be read without Kensa).
Saving a name again overwrites it. Nothing is trusted on the way back: a stored config that no
longer validates (edited in the database, written by an older version) gives a
:class:`PresetError` that names the preset and the field, never a crash deep in a pipeline.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

import db.repositories as repo
from db.models import AugmentationPreset
from engine.augment import (
    TRANSFORMS,
    AugmentConfig,
    AugmentConfigError,
    deserialize,
    serialize,
    validate_config,
)
from services.context import Kensa
from services.data.names import NameRefused, clean_name, lookup_name
from services.data.projects import require_project

#: How the summary line separates the steps ("Horizontal flip · Noise · Perlin defects").
SUMMARY_SEPARATOR = " · "


class PresetError(ValueError):
    """A preset cannot be found, named or used; the message is a sentence naming the preset."""


def _kensa_json(stored: Any) -> Any:
    """The Kensa part of a stored config, or None when the row does not have one."""
    return stored.get("kensa") if isinstance(stored, dict) else None


def _summary(kensa: Any) -> str:
    """The steps' plain titles in order; an unknown step shows its stored name."""
    steps = kensa.get("transforms") if isinstance(kensa, dict) else None
    if not isinstance(steps, list):
        return ""
    titles = []
    for step in steps:
        name = step.get("name") if isinstance(step, dict) else None
        spec = TRANSFORMS.get(name) if isinstance(name, str) else None
        titles.append(spec.title if spec is not None else str(name))
    return SUMMARY_SEPARATOR.join(titles)


def _as_dict(preset: AugmentationPreset) -> dict[str, Any]:
    kensa = _kensa_json(preset.config)
    return {
        "id": preset.id,
        "name": preset.name,
        "config": kensa,
        "for_training": bool(preset.for_training),
        "created_at": preset.created_at,
        "updated_at": preset.updated_at,
        "summary": _summary(kensa),
    }


def _name(name: str) -> str:
    try:
        return clean_name(name, "preset")
    except NameRefused as exc:
        raise PresetError(str(exc)) from None


def _unknown(project: str, name: str) -> PresetError:
    return PresetError(f"there is no preset named {name!r} in project {project!r}")


def _require(session: Session, project_id: int, project: str, name: str) -> AugmentationPreset:
    preset = repo.get_preset_by_name(session, project_id, lookup_name(name))
    if preset is None:
        raise _unknown(project, name)
    return preset


def _validated(config: dict[str, Any] | AugmentConfig) -> AugmentConfig:
    """The config checked by the engine (AugmentConfigError names each bad field)."""
    return validate_config(config.to_json() if isinstance(config, AugmentConfig) else config)


# --------------------------------------------------------------------------- reads


def list_presets(ctx: Kensa, project: str) -> list[dict[str, Any]]:
    """The project's presets by name (see :func:`get_preset` for the keys)."""
    with ctx.session(readonly=True) as s:
        project_id = require_project(s, project).id
        return [_as_dict(p) for p in repo.list_presets(s, project_id)]


def get_preset(ctx: Kensa, project: str, name: str) -> dict[str, Any]:
    """``{"id", "name", "config" (Kensa JSON), "for_training", "created_at", "updated_at",
    "summary"}``; PresetError if the project has no preset by that name."""
    with ctx.session(readonly=True) as s:
        project_id = require_project(s, project).id
        return _as_dict(_require(s, project_id, project, name))


def training_preset(ctx: Kensa, project: str) -> dict[str, Any] | None:
    """The preset training applies, or None when training uses no augmentation."""
    with ctx.session(readonly=True) as s:
        preset = repo.training_preset(s, require_project(s, project).id)
        return None if preset is None else _as_dict(preset)


def load_config(preset: dict[str, Any]) -> AugmentConfig:
    """The preset's config, validated again: PresetError naming the preset and the field when
    the stored JSON no longer describes a valid pipeline."""
    name = preset.get("name", "?")
    kensa = preset.get("config")
    if not isinstance(kensa, dict):
        raise PresetError(
            f"the preset {name!r} holds no settings this version can read; save it again"
        )
    try:
        return deserialize({"kensa": kensa})
    except AugmentConfigError as exc:
        raise PresetError(f"the preset {name!r} cannot be used: {exc}") from exc


# --------------------------------------------------------------------------- writes


def save_preset(
    ctx: Kensa, project: str, name: str, config: dict[str, Any] | AugmentConfig
) -> dict[str, Any]:
    """Save ``config`` under ``name`` (overwriting a preset of that name).

    The config is validated before anything is written: AugmentConfigError names the field.
    """
    clean = _name(name)
    stored = serialize(_validated(config))
    with ctx.session() as s:
        project_id = require_project(s, project).id
        return _as_dict(repo.save_preset(s, project_id, clean, stored))


def rename_preset(ctx: Kensa, project: str, old: str, new: str) -> dict[str, Any]:
    """Rename preset ``old`` to ``new``; refused when another preset is called ``new``."""
    clean = _name(new)
    with ctx.session() as s:
        project_id = require_project(s, project).id
        preset = _require(s, project_id, project, old)
        try:
            repo.rename_preset(s, project_id, preset.name, clean)
        except repo.PresetNameTaken:
            raise PresetError(
                f"a preset named {clean!r} already exists in project {project!r}; "
                "choose another name or delete that preset first"
            ) from None
        s.flush()
        s.refresh(preset)
        return _as_dict(preset)


def delete_preset(ctx: Kensa, project: str, name: str) -> None:
    """Delete preset ``name`` (if training used it, training then uses no augmentation)."""
    with ctx.session() as s:
        project_id = require_project(s, project).id
        if not repo.delete_preset(s, project_id, lookup_name(name)):
            raise _unknown(project, name)


def mark_for_training(ctx: Kensa, project: str, name: str | None) -> None:
    """Make preset ``name`` the one training applies (None: training uses no augmentation).

    A preset whose stored config no longer validates is refused here, not at training time.
    """
    with ctx.session() as s:
        project_id = require_project(s, project).id
        if name is not None:
            preset = _require(s, project_id, project, name)
            load_config(_as_dict(preset))  # PresetError naming the preset and the field
            name = preset.name
        repo.set_training_preset(s, project_id, name)

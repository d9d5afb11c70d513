"""Bank versions, thresholds and rollback: the part of a project that is history, never edited.

* ``set_threshold`` adds a threshold row and deactivates the old one;
* ``update_bank`` turns a few new good images into bank version n+1 (parent n) with a
  re-validated threshold;
* ``rollback`` appends a ``rollback`` version that reuses an earlier version's file.

Versions are state versions of any model (``state_versions``); "bank" is the word for the
memory-bank models that have them. The model is reached through the registry and asked for
``Capability.INCREMENTAL_UPDATE`` before an update: a model without it is refused in words.

Crash safety (SIGKILL at any point): files are written atomically first, into a fresh folder
no row uses yet; the rows (state version, its provenance records, its threshold) follow in ONE
transaction. A kill leaves at worst an orphaned folder, never a row pointing at a missing or
partial file, and never a version without its threshold. State files are immutable once a row
points at them, which is why a rollback can point at the restored version's own files instead
of copying them (every sha256 of its manifest is verified first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import db.repositories as repo
from db.models import StateKind
from engine import thresholds
from engine.data import ImageLoadError, load_image, sha256_file
from engine.models import (
    AnomalyModel,
    Capability,
    ImageSource,
    ModelStateError,
    ProgressFn,
    registry,
    verify_files,
)
from services.context import Kensa
from services.data.projects import active_model_version, require_project
from services.history.provenance import state_columns, store_records
from services.inference.batches import (
    ActiveModel,
    active_model,
    get_active_model,
    load_model,
    threshold_params,
    validation_batch_name,
)
from services.inference.scoring import ThresholdInfo, image_files
from services.training.fit import Validation, choose_threshold

# --------------------------------------------------------------------------- thresholds


def set_threshold(ctx: Kensa, name: str, value: float, method: str = "manual",
                  created_by: str | None = None) -> dict[str, Any]:
    """Make ``value`` the active threshold of the active bank; the old row stays, inactive.

    The bank's calibration (median good score, validated threshold) is carried over, so
    normalized scores keep their meaning and ``normalized_value`` shows where the new
    threshold sits on that scale (0.5 = the validated one).
    """
    value = thresholds.manual(value).value  # refuses NaN / inf with a clear message
    with ctx.session() as s:
        project = require_project(s, name)
        active = active_model(ctx, s, project)
        current = repo.get_threshold(s, active.threshold_id)
        row = repo.add_threshold(
            s, active.bank_version_id, method=method, raw_value=value,
            normalized_value=float(active.calibration.normalized(value)),
            params=threshold_params({"previous": current.raw_value},
                                    current.params.get("normal_scores", ()),
                                    active.calibration.value),
            created_by=created_by,
        )
        return _threshold_dict(row, active.model_version_id, active.bank_version)


def _threshold_dict(row: Any, model_version_id: int, bank_version: int) -> dict[str, Any]:
    return {
        "id": row.id, "model_version_id": model_version_id, "bank_version": bank_version,
        "method": row.method, "raw_value": row.raw_value,
        "normalized_value": row.normalized_value, "active": row.active,
        "created_by": row.created_by, "created_at": row.created_at,
    }


# --------------------------------------------------------------------------- bank update


def _validation_set(ctx: Kensa, name: str, active: ActiveModel) -> list[tuple[str, str, int]]:
    """(path, sha256, label) of the active model's stored validation images."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        batch = repo.get_batch_by_name(s, project.id, validation_batch_name(
            active.model_version_id))
        if batch is None:
            return []
        labels = {i.sha256: i.label for i in repo.list_images(s, project.id)}
        return [(p.image_path, p.image_sha256, int(labels.get(p.image_sha256) == "defect"))
                for p in repo.list_predictions(s, batch.id) if p.image_sha256 in labels]


def _revalidate(model: AnomalyModel, items: list[tuple[str, str, int]],
                exclude: set[str], progress: ProgressFn) -> Validation | None:
    """Re-score the validation images that still exist unchanged (same sha256)."""
    paths, labels, scores = [], [], []
    for i, (path, sha, label) in enumerate(items):
        progress("re-validating threshold", 0.5 + 0.45 * i / max(1, len(items)))
        if sha in exclude:  # now part of the bank: its score would say nothing
            continue
        try:
            if sha256_file(path) != sha:
                continue
            image = load_image(path)
        except (OSError, ImageLoadError):
            continue
        paths.append(path)
        labels.append(label)
        scores.append(float(model.score([image]).scores[0]))
    if not paths:
        return None
    return Validation(paths, np.asarray(labels, np.int64), np.asarray(scores, np.float64))


def _new_threshold(validation: Validation | None, active: ActiveModel) -> dict[str, Any]:
    """The threshold of a grown bank: re-chosen on validation, else the previous one kept."""
    reason = "no stored validation image is still available"
    if validation is not None:
        try:
            result, metrics = choose_threshold(validation)
        except ValueError as exc:  # e.g. too few good images left to choose on
            reason = str(exc)
        else:
            params = {**result.params, "revalidated_on": len(validation.paths)}
            if metrics:
                params["metrics"] = metrics
            return {"method": result.method, "value": float(result.value),
                    "normal": validation.normal_scores, "calibration": float(result.value),
                    "params": params}
    return {"method": active.rule.method, "value": active.rule.value,
            "normal": active.rule.normal_scores, "calibration": active.calibration.value,
            "params": {"kept": reason}}


def update_bank(ctx: Kensa, name: str, image_paths: Sequence[str | Path], note: str | None = None,
                progress: ProgressFn | None = None) -> dict[str, Any]:
    """Add a few new good images to the active bank: bank version n+1 plus its threshold.

    The threshold is re-chosen on the stored validation images that still exist unchanged
    (same rule as training); when none do, the previous threshold is kept, as a new row of the
    new version. Returns the new bank version (as in :func:`history`) with its ``threshold``
    and the ``problems`` (files that could not be read, by name).
    """
    report = progress or (lambda stage, fraction: None)
    files = [f for p in image_paths for f in image_files(Path(p))]
    if not files:
        raise ValueError("no image files given to add to the bank")
    active = get_active_model(ctx, name)
    spec = registry.spec(active.state_format)
    if Capability.INCREMENTAL_UPDATE not in spec.capabilities:
        raise ValueError(f"the model of {name!r} ({spec.title}) cannot learn new good images "
                         "after training; train a new model version that includes them")
    images, sources, problems = [], [], []
    for path in files:
        try:
            digest, image = sha256_file(path), load_image(path)
        except (OSError, ImageLoadError) as exc:
            problems.append({"path": str(path), "problem": str(exc)})
            continue
        images.append(image)
        sources.append(ImageSource(str(Path(path).resolve()), digest))
    if not images:
        raise ValueError("none of the images could be read: "
                         + "; ".join(p["problem"] for p in problems))
    shas = [src.sha256 for src in sources]
    report("loading model", 0.05)
    model = load_model(active).model
    with ctx.session(readonly=True) as s:  # ids never reused, even those of rolled-back updates
        first_id = repo.next_provenance_id(s, active.model_version_id)
    report("extracting features", 0.1)
    grown = _grow(model, images, sources, first_id)
    validation = _revalidate(grown.model, _validation_set(ctx, name, active), set(shas), report)
    chosen = _new_threshold(validation, active)
    normal = tuple(float(v) for v in chosen["normal"])
    calibration = ThresholdInfo(chosen["calibration"], "calibration", normal)
    report("saving bank", 0.95)
    state_dir = ctx.new_state_dir(active.project_id, active.model_version_id)
    files_written = grown.model.save(state_dir)
    with ctx.session() as s:  # all rows or none: a version never lacks threshold or records
        bank = repo.add_state_version(
            s, active.model_version_id, kind=StateKind.INCREMENTAL.value,
            state_format=active.state_format, directory=ctx.stored(state_dir),
            files=files_written, **state_columns(grown.model), source_images=shas,
            note=note or f"added {len(images)} good image(s)",
        )
        if bank.parent_id != active.bank_version_id:
            raise RuntimeError("the active bank changed while this update ran; run it again")
        store_records(s, active.model_version_id, bank.id, grown.records)
        threshold = repo.add_threshold(
            s, bank.id, method=chosen["method"], raw_value=chosen["value"],
            normalized_value=float(calibration.normalized(chosen["value"])),
            params=threshold_params(chosen["params"], normal, calibration.value),
            created_by="update_bank",
        )
        out = _bank_dict(bank, {bank.parent_id: active.bank_version}, ctx)
        out["threshold"] = _threshold_dict(threshold, active.model_version_id, bank.version)
    report("done", 1.0)
    out["problems"] = problems
    return out


def bank_update_payload(ctx: Kensa, name: str, image_paths: Sequence[str | Path],
                        note: str | None = None) -> tuple[dict[str, Any], int]:
    """The ``update_bank`` job's payload and project id; refuses a project without a model now.

    Paths are made absolute: the job may run in another process (or on another machine
    sharing ``KENSA_HOME``) with another working directory.
    """
    active = get_active_model(ctx, name)
    paths = [str(Path(p).expanduser().resolve()) for p in image_paths]
    if not paths:
        raise ValueError("no image files given to add to the bank")
    return {"name": name, "paths": paths, "note": note}, active.project_id


def start_bank_update_job(ctx: Kensa, name: str, image_paths: Sequence[str | Path],
                          note: str | None = None) -> int:
    """:func:`update_bank` as a queued job, so a page does not block on it; returns the job id.

    The new version shows up in :func:`history` when the job commits.
    """
    from services.jobs.api import submit

    payload, project_id = bank_update_payload(ctx, name, image_paths, note)
    return submit(ctx, "update_bank", payload, project_id=project_id)


def _grow(model: AnomalyModel, images: Sequence[np.ndarray], sources: list[ImageSource],
          first_id: int) -> Any:
    """The model's own incremental update (a new model object); refuses a no-op update."""
    result = model.update(images, sources, first_id)  # type: ignore[attr-defined]
    if result.added == 0:
        raise ValueError(
            f"the {len(images)} new image(s) add no patch the bank does not already cover "
            f"(novelty distance {result.threshold:.4f}); the active bank stays as it is"
        )
    return result


# --------------------------------------------------------------------------- rollback


def rollback(ctx: Kensa, name: str, to_version: int, note: str | None = None,
             created_by: str | None = None) -> dict[str, Any]:
    """Append a ``rollback`` bank version that restores version ``to_version`` (and the
    threshold that was active for it) and make it active.

    The new row points at the restored version's file, which is checked against its sha256
    first: a rollback to a missing or altered bank is refused.
    """
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        mv = active_model_version(s, project.id)
        if mv is None:
            raise LookupError(f"project {name!r} has no trained model yet")
        banks = repo.list_state_versions(s, mv.id)
    target = next((b for b in banks if b.version == to_version), None)
    if target is None:
        known = ", ".join(f"v{b.version}" for b in banks)
        raise LookupError(f"model version {mv.id} of {name!r} has no bank v{to_version} "
                          f"(it has {known})")
    if target.is_active:
        raise ValueError(f"bank v{to_version} is already the active version")
    directory = ctx.resolve(target.directory) or ctx.resolve(mv.artifact_dir)
    if directory is None or not target.files:
        raise ValueError(f"cannot roll back to v{to_version}: it records no files")
    try:
        verify_files(directory, target.files)
    except ModelStateError as exc:
        raise ValueError(f"cannot roll back to v{to_version}: {exc}") from None
    with ctx.session() as s:
        bank = repo.rollback_state_version(s, mv.id, target.id, note=note,
                                           created_by=created_by or "rollback")
        threshold = repo.get_active_threshold(s, bank.id)
        out = _bank_dict(bank, {target.id: target.version}, ctx)
        out["threshold"] = (None if threshold is None
                            else _threshold_dict(threshold, mv.id, bank.version))
        return out


# --------------------------------------------------------------------------- history


def _bank_dict(bank: Any, version_of: dict[int | None, int], ctx: Kensa) -> dict[str, Any]:
    """A state version for pages and the CLI; ``file`` / ``sha256`` name its bank file (the
    manifest's ``.safetensors`` entry; None for a state without one)."""
    directory = ctx.resolve(bank.directory)
    bank_name = next((n for n in bank.files if n.endswith(".safetensors")), None)
    return {
        "id": bank.id, "model_version_id": bank.model_version_id, "version": bank.version,
        "kind": bank.kind, "parent": version_of.get(bank.parent_id),
        "state_format": bank.state_format, "vector_count": bank.vector_count, "dim": bank.dim,
        "source_images": list(bank.source_images),
        "directory": None if directory is None else str(directory),
        "files": dict(bank.files),
        "sha256": None if bank_name is None else bank.files[bank_name],
        "file": None if bank_name is None or directory is None else str(directory / bank_name),
        "active": bank.is_active, "note": bank.note, "created_at": bank.created_at,
    }


def history(ctx: Kensa, name: str) -> dict[str, Any]:
    """Bank versions, thresholds and batches of a project, oldest first, in one snapshot.

    Every bank version keeps its own active threshold (restored by a rollback); ``in_use``
    marks the one scoring applies now: the active threshold of the active bank of the active
    model version.
    """
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        mv = active_model_version(s, project.id)
        banks, thresholds_out = [], []
        for m in reversed(repo.list_model_versions(s, project.id)):
            rows = repo.list_state_versions(s, m.id)
            version_of: dict[int | None, int] = {b.id: b.version for b in rows}
            for b in rows:
                banks.append(_bank_dict(b, version_of, ctx))
                in_force = mv is not None and m.id == mv.id and b.is_active
                thresholds_out += [{**_threshold_dict(t, m.id, b.version),
                                    "in_use": in_force and t.active}
                                   for t in repo.list_thresholds(s, b.id)]
        batches = [dict(b.__dict__) for b in repo.batch_summaries(s, project.id)]
    return {
        "project": name,
        "active_model_version": None if mv is None else mv.id,
        "memory_bank_versions": banks,
        "thresholds": sorted(thresholds_out, key=lambda t: t["id"]),
        "batches": batches,
        "predictions_count": sum(b["predictions"] for b in batches),
    }

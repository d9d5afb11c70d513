"""Bank versions, thresholds and rollback: the part of a project that is history, never edited.

* ``set_threshold`` adds a threshold row and deactivates the old one;
* ``update_bank`` turns a few new good images into bank version n+1 (parent n) with a
  re-validated threshold; it refuses what would poison the bank (see :func:`update_bank`);
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
from engine.data import ImageLoadError, degenerate_reason, load_image_and_sha256
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


def validation_scores(session: Any, project_id: int, active: ActiveModel
                      ) -> tuple[list[float], list[float]]:
    """(good scores, every score) a threshold of the active model is judged against.

    Good scores are those the active threshold row was calibrated on; every score adds the
    stored validation batch (defects included) of the active model version.
    """
    good = [float(v) for v in active.rule.normal_scores or active.calibration.normal_scores]
    batch = repo.get_batch_by_name(session, project_id,
                                   validation_batch_name(active.model_version_id))
    every = [] if batch is None else [float(v) for v in repo.batch_scores(session, batch.id)]
    return good, every


def set_threshold(ctx: Kensa, name: str, value: float, method: str = "manual",
                  created_by: str | None = None, confirm_extreme: bool = False
                  ) -> dict[str, Any]:
    """Make ``value`` the active threshold of the active bank; the old row stays, inactive.

    A threshold of -1, 0 or 1e308 once went in unnoticed and turned every verdict into
    "defect" or "good": ``value`` must be finite and inside the sane range of the model's
    validation scores (:func:`engine.thresholds.sane_range`), unless ``confirm_extreme``
    says a person means it (then ``params["confirmed_extreme"]`` records that).

    The bank's calibration (median good score, validated threshold) is carried over, so
    normalized scores keep their meaning and ``normalized_value`` shows where the new
    threshold sits on that scale (0.5 = the validated one).
    """
    value = thresholds.manual(value).value  # refuses NaN / inf with a clear message
    with ctx.session() as s:
        project = require_project(s, name)
        active = active_model(ctx, s, project)
        good, every = validation_scores(s, project.id, active)
        thresholds.check_sane(value, good, every, confirm_extreme=confirm_extreme)
        extreme = not _is_sane(value, good, every)  # only reached when confirmed
        current = repo.get_threshold(s, active.threshold_id)
        row = repo.add_threshold(
            s, active.bank_version_id, method=method, raw_value=value,
            normalized_value=float(active.calibration.normalized(value)),
            params=threshold_params({"previous": current.raw_value,
                                     **({"confirmed_extreme": True} if extreme else {})},
                                    current.params.get("normal_scores", ()),
                                    active.calibration.value),
            created_by=created_by,
        )
        return _threshold_dict(row, active.model_version_id, active.bank_version)


def _is_sane(value: float, good: Sequence[float], every: Sequence[float]) -> bool:
    try:
        thresholds.check_sane(value, good, every)
    except ValueError:
        return False
    return True


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
            image, digest = load_image_and_sha256(path)
        except (OSError, ImageLoadError):
            continue
        if digest != sha:
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


class BankUpdateRefused(ValueError):
    """Images that would poison the bank; nothing was written (the message names each one)."""


def _candidates(ctx: Kensa, name: str, files: Sequence[Path]
                ) -> tuple[list[np.ndarray], list[ImageSource], list[dict[str, str]],
                           list[str]]:
    """Decode the candidate images: (images, sources, unreadable files, refusals).

    Each file is read once: its sha256 is that of the decoded bytes. Refused, by name: images
    the project labels ``defect`` (by content, whatever the file is called now) and images too
    small or too flat to teach "good" (:func:`engine.data.degenerate_reason`).
    """
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        defects = {i.sha256: i.path for i in repo.list_images(s, project.id, label="defect")}
    images, sources, problems, refused = [], [], [], []
    for path in files:
        try:
            image, digest = load_image_and_sha256(path)
        except (OSError, ImageLoadError) as exc:
            problems.append({"path": str(path), "problem": str(exc)})
            continue
        if digest in defects:
            refused.append(f"{Path(path).name} is labelled defect in this project (as "
                           f"{Path(defects[digest]).name}); a defect image must never become "
                           "part of what the model calls good")
            continue
        reason = degenerate_reason(image)
        if reason:
            refused.append(f"{Path(path).name} {reason}")
            continue
        images.append(image)
        sources.append(ImageSource(str(Path(path).resolve()), digest))
    return images, sources, problems, refused


def _suspects(model: AnomalyModel, images: Sequence[np.ndarray], sources: Sequence[ImageSource],
              rule: ThresholdInfo) -> list[dict[str, Any]]:
    """Candidates the CURRENT model already scores as defects (score >= active threshold)."""
    out = []
    for image, src in zip(images, sources, strict=True):
        score = float(model.score([image]).scores[0])
        if score >= rule.value:
            out.append({"path": src.path, "sha256": src.sha256, "score": score,
                        "threshold": rule.value})
    return out


#: Ends every refusal of an image that scores as a defect; the CLI adds its override flag.
SUSPECT_PHRASE = "add it only if a person confirms it is good"


def _suspect_message(s: dict[str, Any]) -> str:
    """Files are named, not their server paths: the message reaches pages and job rows."""
    return (f"{Path(s['path']).name} scores {s['score']:.4g}, above the threshold "
            f"{s['threshold']:.4g}: it looks like a defect; {SUSPECT_PHRASE}")


def _threshold_note(active: ActiveModel, chosen: dict[str, Any]) -> str:
    """What happened to the threshold, in words (a manual one is never replaced silently)."""
    old, new = active.rule.value, chosen["value"]
    if chosen.get("kept_manual"):
        how = "proposed" if chosen.get("override") else "re-validated"
        return (f"your manual threshold {old:.4g} was kept; the {how} suggestion is "
                f"{chosen['suggested']:.4g}")
    if chosen.get("override"):
        return f"threshold {old:.4g} -> {new:.4g} ({chosen['method']}, proposed by the caller)"
    if "kept" in chosen["params"]:
        return f"threshold {old:.4g} kept ({chosen['params']['kept']})"
    return (f"threshold {old:.4g} -> {new:.4g} ({chosen['method']}, re-validated on "
            f"{chosen['params'].get('revalidated_on', 0)} image(s))")


def _override(value: Any) -> dict[str, Any] | None:
    """A caller's threshold for the new version, checked: ``{"value", "method", "params"}``."""
    if value is None:
        return None
    if not isinstance(value, dict) or not {"value", "method"} <= set(value):
        raise ValueError("threshold_override needs a value and a method")
    number = thresholds.manual(float(value["value"])).value  # refuses NaN / inf in words
    method = str(value["method"]).strip()
    if not method or method == "manual":
        raise ValueError("threshold_override needs the method that proposed it (a person's "
                         "threshold goes through set_threshold)")
    return {"value": number, "method": method, "params": dict(value.get("params") or {})}


def update_bank(ctx: Kensa, name: str, image_paths: Sequence[str | Path], note: str | None = None,
                progress: ProgressFn | None = None, force_suspect: bool = False,
                kind: str = StateKind.INCREMENTAL.value,
                threshold_override: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add a few new good images to the active bank: bank version n+1 plus its threshold.

    A bank update tells the model "this is good"; a defect slipped in makes that defect score
    "good" with full confidence from then on, silently. So before anything is written it
    refuses (:class:`BankUpdateRefused`, every file named): images the project labels defect,
    degenerate images (tiny or flat), and images the current model scores at or above the
    active threshold, with their score; the last kind goes in only with ``force_suspect``
    (a person confirmed them), which the version's note records by file and score.

    The threshold is re-chosen on the stored validation images that still exist unchanged
    (same rule as training); when none do, the previous threshold is kept, as a new row of the
    new version. A threshold a person set by hand (method ``manual``) is kept, and the result's
    ``threshold_note`` says so with the re-validated suggestion. ``kind`` is ``online`` when
    the images were chosen by the model itself (services.history.adaptation), so the history
    tells a person's choice from an automatic one.

    ``threshold_override`` (``{"value", "method", "params"}``) replaces the re-validated
    threshold with one the caller proposed (online adaptation's running mean + 3 sigma,
    :mod:`engine.adapt`); the validation images are still re-scored, so the row keeps their
    good scores for calibration and ``params["revalidated_suggestion"]`` records what the
    usual rule would have chosen. It must lie in the sane range of those scores. A manual
    threshold still wins over an override (kept, the override recorded as the suggestion).
    Returns the new bank version
    (as in :func:`history`) with its ``threshold``, ``threshold_note``, ``forced`` (suspects
    added on confirmation) and ``problems`` (files that could not be read, by name).
    """
    if kind not in (StateKind.INCREMENTAL.value, StateKind.ONLINE.value):
        raise ValueError(f"a bank update is incremental or online, not {kind!r}")
    override = _override(threshold_override)
    report = progress or (lambda stage, fraction: None)
    files = [f for p in image_paths for f in image_files(Path(p))]
    if not files:
        raise ValueError("no image files given to add to the bank")
    active = get_active_model(ctx, name)
    spec = registry.spec(active.state_format)
    if Capability.INCREMENTAL_UPDATE not in spec.capabilities:
        raise ValueError(f"the model of {name!r} ({spec.title}) cannot learn new good images "
                         "after training; train a new model version that includes them")
    images, sources, problems, refused = _candidates(ctx, name, files)
    if not images and not refused:
        raise ValueError("none of the images could be read: "
                         + "; ".join(p["problem"] for p in problems))
    report("loading model", 0.05)
    model = load_model(active).model
    report("checking the new images", 0.08)
    suspects = _suspects(model, images, sources, active.rule)
    if not force_suspect:
        refused += [_suspect_message(x) for x in suspects]
    if refused:
        raise BankUpdateRefused(f"bank not updated, {len(refused)} image(s) refused: "
                                + "; ".join(refused))
    shas = [src.sha256 for src in sources]
    with ctx.session(readonly=True) as s:  # ids never reused, even those of rolled-back updates
        first_id = repo.next_provenance_id(s, active.model_version_id)
    report("extracting features", 0.1)
    grown = _grow(model, images, sources, first_id)
    validation = _revalidate(grown.model, _validation_set(ctx, name, active), set(shas), report)
    chosen = _new_threshold(validation, active)
    if override is not None:
        if validation is not None and validation.normal_scores.size:
            try:  # the sane range of the grown bank's own validation scores
                thresholds.check_sane(override["value"], validation.normal_scores,
                                      validation.scores)
            except ValueError as exc:
                raise ValueError(f"bank not updated: the proposed {override['method']} "
                                 f"threshold is not usable ({exc})") from None
        chosen = {**chosen, "override": True, "method": override["method"],
                  "value": override["value"],
                  "params": {**override["params"], "revalidated_suggestion": chosen["value"],
                             "revalidated_method": chosen["method"],
                             **({"kept": chosen["params"]["kept"]}
                                if "kept" in chosen["params"] else {})}}
    if active.rule.method == "manual":  # a person's choice is never replaced silently
        chosen = {**chosen, "kept_manual": True, "suggested": chosen["value"],
                  "method": "manual", "value": active.rule.value,
                  "params": {**chosen["params"], "kept_manual": active.rule.value,
                             "suggested": chosen["value"], "suggested_method": chosen["method"]}}
    normal = tuple(float(v) for v in chosen["normal"])
    calibration = ThresholdInfo(chosen["calibration"], "calibration", normal)
    forced = [{k: x[k] for k in ("path", "score", "threshold")} for x in suspects]
    text = note or f"added {len(images)} good image(s)"
    if forced:
        text += "; added on a person's confirmation although they scored as defects: " + \
            ", ".join(f"{x['path']} ({x['score']:.4g} >= {x['threshold']:.4g})" for x in forced)
    report("saving bank", 0.95)
    state_dir = ctx.new_state_dir(active.project_id, active.model_version_id)
    files_written = grown.model.save(state_dir)
    with ctx.session() as s:  # all rows or none: a version never lacks threshold or records
        bank = repo.add_state_version(
            s, active.model_version_id, kind=kind,
            state_format=active.state_format, directory=ctx.stored(state_dir),
            files=files_written, **state_columns(grown.model), source_images=shas, note=text,
        )
        if bank.parent_id != active.bank_version_id:
            raise RuntimeError("the active bank changed while this update ran; run it again")
        store_records(s, active.model_version_id, bank.id, grown.records)
        params = chosen["params"] if not forced else {**chosen["params"], "forced": forced}
        threshold = repo.add_threshold(
            s, bank.id, method=chosen["method"], raw_value=chosen["value"],
            normalized_value=float(calibration.normalized(chosen["value"])),
            params=threshold_params(params, normal, calibration.value),
            created_by="update_bank",
        )
        out = _bank_dict(bank, {bank.parent_id: active.bank_version}, ctx)
        out["threshold"] = _threshold_dict(threshold, active.model_version_id, bank.version)
    report("done", 1.0)
    out["threshold_note"] = _threshold_note(active, chosen)
    out["forced"] = forced
    out["problems"] = problems
    return out


def bank_update_payload(ctx: Kensa, name: str, image_paths: Sequence[str | Path],
                        note: str | None = None, force_suspect: bool = False,
                        kind: str = StateKind.INCREMENTAL.value,
                        threshold_override: dict[str, Any] | None = None
                        ) -> tuple[dict[str, Any], int]:
    """The ``update_bank`` job's payload and project id; refuses a project without a model now.

    Paths are made absolute: the job may run in another process (or on another machine
    sharing ``KENSA_HOME``) with another working directory.
    """
    active = get_active_model(ctx, name)
    paths = [str(Path(p).expanduser().resolve()) for p in image_paths]
    if not paths:
        raise ValueError("no image files given to add to the bank")
    payload: dict[str, Any] = {"name": name, "paths": paths, "note": note,
                               "force_suspect": bool(force_suspect), "kind": kind}
    if threshold_override is not None:  # checked now, so a page hears of a bad one at once
        payload["threshold_override"] = _override(threshold_override)
    return payload, active.project_id


def start_bank_update_job(ctx: Kensa, name: str, image_paths: Sequence[str | Path],
                          note: str | None = None, force_suspect: bool = False,
                          kind: str = StateKind.INCREMENTAL.value,
                          threshold_override: dict[str, Any] | None = None) -> int:
    """:func:`update_bank` as a queued job, so a page does not block on it; returns the job id.

    The new version shows up in :func:`history` when the job commits.
    """
    from services.jobs.api import submit

    payload, project_id = bank_update_payload(ctx, name, image_paths, note, force_suspect, kind,
                                              threshold_override)
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


def _runs(ctx: Kensa, name: str) -> list[dict[str, Any]]:
    """Training runs oldest first: the model version's status and error next to its job's.

    The job list is read first, which reaps jobs whose worker stopped (heartbeat too old):
    a killed training then shows as failed with the reason instead of "running" for ever.
    """
    from services.jobs.api import list_jobs

    jobs: dict[int, dict[str, Any]] = {}
    for job in list_jobs(ctx, name, kinds=["train"], limit=None):  # newest first
        mv_id = job["payload"].get("model_version_id")
        if isinstance(mv_id, int):
            jobs.setdefault(mv_id, job)
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        rows = list(reversed(repo.list_model_versions(s, project.id)))
        out = []
        for mv in rows:
            job = jobs.get(mv.id)
            out.append({
                "model_version_id": mv.id, "algorithm": mv.algorithm, "backbone": mv.backbone,
                "status": mv.status, "stage": mv.stage, "progress": mv.progress,
                "error": mv.error, "created_at": mv.created_at, "started_at": mv.started_at,
                "finished_at": mv.finished_at, "fit_seconds": mv.fit_seconds,
                "job_id": None if job is None else job["id"],
                "job_status": None if job is None else job["status"],
                "job_error": None if job is None else job["error"],
            })
    return out


def history(ctx: Kensa, name: str) -> dict[str, Any]:
    """Runs, bank versions, thresholds and batches of a project, oldest first.

    Every bank version keeps its own active threshold (restored by a rollback); ``in_use``
    marks the one scoring applies now: the active threshold of the active bank of the active
    model version. ``runs`` lists every training, failed and cancelled ones included.
    """
    runs = _runs(ctx, name)
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
        "runs": runs,
        "memory_bank_versions": banks,
        "thresholds": sorted(thresholds_out, key=lambda t: t["id"]),
        "batches": batches,
        "predictions_count": sum(b["predictions"] for b in batches),
    }

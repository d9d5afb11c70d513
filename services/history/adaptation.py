"""Adaptation from the Drift page: teach the model new good images, judge the change, undo it.

What this module adds to :mod:`services.history.versions` (which does the update itself, with
its refusals) is what a page needs around it:

* :func:`good_lot_images` — the images of a lot the model called good, the candidates a person
  picks from; :func:`save_uploads` keeps uploaded images under ``$KENSA_HOME/adaptation/``
  (a bank records where its patches came from, so the files must stay);
* :func:`start_update` — the ``update_bank`` job (kind ``incremental``, its parent the active
  version); :func:`job_error_words` turns a refusal into words without server paths;
* :func:`compare_versions` — scores of the validation images and of a lot under two bank
  versions, each loaded from its own files, so a person sees what the update changed;
* :func:`versions` — the bank versions of the active model with their thresholds (rollback
  targets); :func:`plan_online` / :func:`adapt_from_lot` / :func:`start_online_update` —
  online adaptation (:class:`engine.adapt.AdaptiveInference`): the images of a lot scored
  confidently normal (below the review band) feed the bank in chunks, each chunk a new
  version of kind ``online`` with its own ``running_mean_3sigma`` threshold row. Never a
  silent change: it runs only when a person asks, and each version can be rolled back.

Cost of :func:`compare_versions`: every image is scored twice (once per version), about
2 x 110-200 ms per image at the 512-px default on a 2-core CPU (``bench/fewshot.py``'s
magnetic-tile and toothbrush rows; 100 images: 20-40 s), plus loading two models.
Pages cache it per (project, versions, lot): state files never change once written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

import db.repositories as repo
from db.models import Prediction, Provenance, StateKind, StateVersion, Verdict
from engine import adapt
from engine.artifacts import write_bytes_atomic
from engine.data import ImageLoadError, load_image_and_sha256
from engine.models import registry
from engine.thresholds import ReviewBand
from services.context import Kensa
from services.data.imports import project_slug
from services.data.names import lookup_name
from services.data.projects import active_model_version, require_project
from services.inference.batches import (
    VALIDATION_PREFIX,
    get_active_model,
    rules_of,
    validation_batch_name,
)
from services.inference.lots import lot_results
from services.wording import model_and_bank, model_numbers

#: Where uploaded good images live, under ``KENSA_HOME`` (kept: the bank points at them).
ADAPT_DIR = "adaptation"
#: Half-width of the review band around the threshold, in standard deviations of the held-out
#: good scores (:func:`review_band`): online adaptation learns only scores below the band, so
#: with a mean + 3 sigma threshold nothing above mean + 1 sigma; a borderline defect does not
#: slip into the bank unseen.
MARGIN_SIGMA = 2.0
#: Online adaptation's settings (:mod:`engine.adapt`), for pages that describe them.
ONLINE_CHUNK, ONLINE_CAP, ONLINE_WINDOW = adapt.CHUNK, adapt.LOT_CAP, adapt.WINDOW

ProgressFn = Callable[[str, float], None]


# --------------------------------------------------------------------------- candidates


def good_lot_images(ctx: Kensa, project: str, lot: str) -> list[dict[str, Any]]:
    """The lot's images the model called good, most confidently good (lowest score) first.

    Rows of :func:`services.inference.lots.lot_results`; an image a person reviewed as defect
    is left out (the person knows better than the model).
    """
    rows = [r for r in lot_results(ctx, project, lot, verdict=Verdict.GOOD.value)
            if r["reviewed_verdict"] != Verdict.DEFECT.value]
    return sorted(rows, key=lambda r: r["normalized_score"])


def save_uploads(ctx: Kensa, project: str, files: Sequence[tuple[str, bytes]]) -> list[Path]:
    """Keep uploaded images as files the ``update_bank`` job (another process) can read.

    Stored under ``$KENSA_HOME/adaptation/<project>/<sha256 prefix>-<name>``: the name is
    reduced to a safe file name, the content hash keeps two uploads called "good.png" apart,
    and the same bytes uploaded twice land on the same file. Written atomically.
    """
    import hashlib

    folder = ctx.home / ADAPT_DIR / project_slug(project)
    out = []
    for name, data in files:
        digest = hashlib.sha256(data).hexdigest()[:16]
        stem = Path(name).name or "image"
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[-80:]
        target = folder / f"{digest}-{safe}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, data)
        out.append(target)
    return out


def start_update(ctx: Kensa, project: str, paths: Sequence[str | Path], *,
                 note: str | None = None, force_suspect: bool = False,
                 kind: str = StateKind.INCREMENTAL.value) -> int:
    """Submit the ``update_bank`` job for ``paths``; returns the job id (refusals come from
    the job: it is the one that scores the candidates)."""
    from services.history.versions import start_bank_update_job

    if not paths:
        raise ValueError("choose at least one good image first")
    return start_bank_update_job(ctx, project, paths, note=note, force_suspect=force_suspect,
                                 kind=kind)


def job_error_words(job: dict[str, Any]) -> str:
    """A failed update's message with file names instead of server paths, and the page's
    confirmation box named where the CLI flag was."""
    text = str(job.get("error") or "the update stopped without saying why")
    for path in sorted(job.get("payload", {}).get("paths", []), key=len, reverse=True):
        text = text.replace(str(path), Path(path).name)
    return text.replace("(--force-suspect)", "(tick “I checked them: they are good”)")


# --------------------------------------------------------------------------- versions


def versions(ctx: Kensa, project: str) -> list[dict[str, Any]]:
    """Bank versions of the active model, oldest first: label ("Model 2 · update 1"), kind,
    parent label, created, the version's active threshold, vectors, note, active flag."""
    with ctx.session(readonly=True) as s:
        project_row = require_project(s, project)
        mv = active_model_version(s, project_row.id)
        if mv is None:
            return []
        number = model_numbers(s, project_row.id).get(mv.id)
        rows = repo.list_state_versions(s, mv.id)
        version_of = {b.id: b.version for b in rows}
        out = []
        for b in rows:
            threshold = repo.get_active_threshold(s, b.id)
            parent = version_of.get(b.parent_id) if b.parent_id else None
            out.append({
                "id": b.id, "version": b.version, "label": model_and_bank(number, b.version),
                "kind": b.kind, "parent": parent,
                "parent_label": None if parent is None else model_and_bank(number, parent),
                "created_at": b.created_at, "active": b.is_active,
                "threshold": None if threshold is None else float(threshold.raw_value),
                "threshold_method": None if threshold is None else threshold.method,
                "vectors": b.vector_count, "images_added": len(b.source_images or []),
                "note": b.note,
            })
        return out


# --------------------------------------------------------------------------- before / after


def _load_version(ctx: Kensa, state: StateVersion, model_dir: Path | None,
                  threshold: Any) -> tuple[Any, Any, Any]:
    """(model, decision rule, calibration) of one stored state version, files checked."""
    directory = ctx.resolve(state.directory) or model_dir
    model = registry.load(state.state_format, directory, files=dict(state.files))
    rule, calibration = rules_of(threshold)
    return model, rule, calibration


def compare_versions(ctx: Kensa, project: str, before: int, after: int,
                     lot: str | None = None, progress: ProgressFn | None = None
                     ) -> dict[str, Any]:
    """Scores of the validation images and of ``lot`` under bank version ``before`` and
    ``after`` of the active model (each loaded from its own files, with its own threshold).

    Returns ``{"rows": [...], "summary": [...], "left_out": n}``: a row per image and set
    (``validation`` / ``lot``) with raw and normalized scores and "flagged" (score at or above
    that version's threshold) under each version; a summary per set (images, median score,
    flagged count under each, verdicts that changed). Images the ``after`` version learned
    from are left out (``left_out``): they are in its bank now, so their score says nothing.
    Normalized scores use each version's own calibration (0.5 = its threshold).

    Also what the two versions are (:func:`_version_facts`): ``versions`` (per version:
    label, kind, vectors, threshold and method, files it learned itself, images in all),
    ``added`` / ``removed`` (file names one version has learned and the other not).
    """
    report = progress or (lambda stage, fraction: None)
    with ctx.session(readonly=True) as s:
        project_row = require_project(s, project)
        mv = active_model_version(s, project_row.id)
        if mv is None:
            raise LookupError(f"project {project!r} has no trained model yet")
        states = {b.version: b for b in repo.list_state_versions(s, mv.id)}
        missing = [v for v in (before, after) if v not in states]
        if missing:
            raise LookupError(f"the model has no bank version {missing[0]}")
        thresholds = {v: repo.get_active_threshold(s, states[v].id) for v in (before, after)}
        if any(t is None for t in thresholds.values()):
            raise LookupError("a bank version without a threshold cannot be compared")
        learned = set(states[after].source_images or []) - set(
            states[before].source_images or [])
        validation = repo.get_batch_by_name(s, project_row.id, validation_batch_name(mv.id))
        labels = {i.sha256: i.label for i in repo.list_images(s, project_row.id)}
        items: list[tuple[str, str, str, str | None]] = []  # (set, path, sha256, label)
        if validation is not None:
            items += [("validation", p.image_path, p.image_sha256, labels.get(p.image_sha256))
                      for p in repo.list_predictions(s, validation.id)
                      if p.image_sha256 in labels]
        model_dir = ctx.resolve(mv.artifact_dir)
        before_state, after_state = states[before], states[after]
        facts = _version_facts(s, project_row.id, mv.id, states, (before, after), thresholds)
        s.expunge_all()
    if lot is not None:
        items += [("lot", r["image_path"], r["sha256"], None)
                  for r in lot_results(ctx, project, lot)]
    report("loading both versions", 0.0)
    loaded = {v: _load_version(ctx, st, model_dir, thresholds[v])
              for v, st in ((before, before_state), (after, after_state))}
    rows, left_out = [], 0
    for i, (kind, path, sha, label) in enumerate(items):
        report("scoring images", 0.05 + 0.95 * i / max(1, len(items)))
        if sha in learned:
            left_out += 1
            continue
        try:
            image, digest = load_image_and_sha256(path)
        except (OSError, ImageLoadError):
            continue
        if digest != sha:  # the file changed since it was scored
            continue
        row: dict[str, Any] = {"set": kind, "file": Path(path).name, "sha256": sha,
                               "label": label}
        for when, v in (("before", before), ("after", after)):
            model, rule, calibration = loaded[v]
            raw = float(model.score([image]).scores[0])
            row[f"{when}_raw"] = raw
            row[f"{when}_score"] = float(calibration.normalized(raw))
            row[f"{when}_flagged"] = raw >= rule.value
        rows.append(row)
    report("done", 1.0)
    return {"before": before, "after": after, "lot": lot, "rows": rows,
            "summary": _summary(rows), "left_out": left_out, **facts}


def _lineage(states: dict[int, StateVersion], version: int) -> list[StateVersion]:
    """The version and the versions it grew from (a rollback's parent: the one it restores)."""
    by_id = {st.id: st for st in states.values()}
    out, seen = [], set()
    current: StateVersion | None = states[version]
    while current is not None and current.id not in seen:
        seen.add(current.id)
        out.append(current)
        current = by_id.get(current.parent_id) if current.parent_id is not None else None
    return out


def _display_name(path: str) -> str:
    """A learned file's name as the person knew it: an upload kept by :func:`save_uploads`
    loses the content-hash prefix that only keeps two "good.png" apart on disk."""
    name = Path(path).name
    stem = name.split("-", 1)
    if (f"/{ADAPT_DIR}/" in Path(path).as_posix() and len(stem) == 2 and len(stem[0]) == 16
            and all(c in "0123456789abcdef" for c in stem[0])):
        return stem[1]
    return name


def _version_facts(session: Any, project_id: int, model_version_id: int,
                   states: dict[int, StateVersion], pair: tuple[int, int],
                   thresholds: dict[int, Any]) -> dict[str, Any]:
    """What each of the two versions IS, next to how it scores: vectors, threshold, the
    files it learned itself and in all (file names only: no server path on a page), and
    which files one has that the other has not.

    A version's images are the ``source_images`` of it and of the versions it grew from;
    names come from the provenance records (the path a file had when it was learned), else
    from the project's images table.
    """
    names = {str(sha): _display_name(str(path)) for path, sha in session.execute(
        select(Provenance.path, Provenance.sha256)
        .where(Provenance.model_version_id == model_version_id)).all()}
    for image in repo.list_images(session, project_id):
        names.setdefault(image.sha256, Path(image.path).name)
    number = model_numbers(session, project_id).get(model_version_id)
    out: dict[str, Any] = {"versions": {}}
    everything = {}
    for v in pair:
        state, threshold = states[v], thresholds[v]
        lineage = _lineage(states, v)
        own = list(dict.fromkeys(state.source_images or []))
        every = list(dict.fromkeys(sha for st in reversed(lineage)
                                   for sha in (st.source_images or [])))
        everything[v] = every
        out["versions"][v] = {
            "version": v, "label": model_and_bank(number, v), "kind": state.kind,
            "vectors": state.vector_count, "dim": state.dim,
            "threshold": float(threshold.raw_value), "threshold_method": threshold.method,
            "learned": sorted(names.get(sha, sha[:12]) for sha in own),
            "images": len(every), "note": state.note,
        }
    before, after = pair
    out["added"] = sorted(names.get(sha, sha[:12]) for sha in everything[after]
                          if sha not in set(everything[before]))
    out["removed"] = sorted(names.get(sha, sha[:12]) for sha in everything[before]
                            if sha not in set(everything[after]))
    return out


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for kind in ("validation", "lot"):
        part = [r for r in rows if r["set"] == kind]
        if not part:
            continue
        out.append({
            "set": kind, "images": len(part),
            "median_before": float(np.median([r["before_score"] for r in part])),
            "median_after": float(np.median([r["after_score"] for r in part])),
            "flagged_before": sum(r["before_flagged"] for r in part),
            "flagged_after": sum(r["after_flagged"] for r in part),
            "changed": sum(r["before_flagged"] != r["after_flagged"] for r in part),
        })
    return out


# --------------------------------------------------------------------------- online


def review_band(ctx: Kensa, project: str) -> dict[str, Any]:
    """The active threshold's review band in raw-score units, and where it comes from.

    Two views of "a person should look at this score", and online adaptation must respect the
    wider of the two (it learns without anyone looking):

    * the evaluation's band (:func:`services.evaluation.report.review_band`, built the same way
      here with :class:`engine.thresholds.ReviewBand`): from the held-out good scores of the
      threshold row and the defect scores of the model's validation batch, the overlap of the
      two classes or the unseen gap between them;
    * the threshold ± ``MARGIN_SIGMA`` standard deviations of those held-out good scores,
      which is all there is when the validation set had no defect image.

    Returns ``{"band": ReviewBand, "sigma", "threshold", "normal_scores", "defect_scores"}``.
    """
    active = get_active_model(ctx, project)
    normal = np.asarray(active.rule.normal_scores or active.calibration.normal_scores, float)
    if normal.size < 2:
        raise ValueError("the model has fewer than two held-out good scores, so its review "
                         "band cannot be placed; pick images by hand instead")
    with ctx.session(readonly=True) as s:
        project_id = require_project(s, project).id
        labels = {i.sha256: i.label for i in repo.list_images(s, project_id)}
        batch = repo.get_batch_by_name(s, project_id,
                                       validation_batch_name(active.model_version_id))
        defects = [] if batch is None else [
            float(p.raw_score) for p in repo.list_predictions(s, batch.id)
            if labels.get(p.image_sha256) == Verdict.DEFECT.value]
    sigma = float(normal.std(ddof=1))
    margin = ReviewBand.from_threshold(active.rule.value, MARGIN_SIGMA * sigma)
    low, high = margin.low, margin.high
    if defects:  # as the Evaluation page draws it: overlap, or the gap between the classes
        highest_good, lowest_defect = float(normal.max()), min(defects)
        low = min(low, highest_good, lowest_defect)
        high = max(high, highest_good, lowest_defect)
    return {"band": ReviewBand(low, high), "sigma": sigma, "threshold": active.rule.value,
            "normal_scores": [float(v) for v in normal], "defect_scores": defects}


def plan_online(ctx: Kensa, project: str, lot: str) -> dict[str, Any]:
    """What "Adapt from this lot" would do now, decided by :class:`engine.adapt.
    AdaptiveInference` over the lot's stored predictions in scoring order.

    Only predictions made with the model in use count (the active version or one with the
    same files, e.g. a rollback to it): a score from another version says nothing about this
    one. An image a person reviewed as defect is never learned, whatever its score; neither
    is one inside the review band (:func:`review_band`). Images of the lot that some version
    of this model already learned are not offered again and count against the per-lot cap.

    Returns ``{"chunks": [Chunk], "band_low", "band_high", "threshold", "method",
    "candidates", "in_band", "reviewed_defect", "already_learned", "waiting",
    "scored_with_other", "cap", "chunk"}``; ``waiting`` confident images did not fill a chunk.
    """
    active = get_active_model(ctx, project)
    band = review_band(ctx, project)
    with ctx.session(readonly=True) as s:
        project_id = require_project(s, project).id
        batch = repo.get_batch_by_name(s, project_id, lookup_name(lot))
        if batch is None or batch.name.startswith(VALIDATION_PREFIX):
            raise LookupError(f"project {project!r} has no lot named {lot!r}")
        states = repo.list_state_versions(s, active.model_version_id)
        same = {st.id for st in states if dict(st.files or {}) == dict(active.files)}
        learned = {sha for st in states for sha in (st.source_images or [])}
        window = _stored_window(s, active)
        preds = list(s.execute(
            select(Prediction.state_version_id, Prediction.raw_score, Prediction.verdict,
                   Prediction.reviewed_verdict, Prediction.image_sha256, Prediction.image_path)
            .where(Prediction.batch_id == batch.id).order_by(Prediction.id)).all())
    mine = [p for p in preds if p.state_version_id in same | {active.bank_version_id}]
    already = {p.image_sha256 for p in mine} & learned
    reviewed_defect = [p for p in mine if p.reviewed_verdict == Verdict.DEFECT.value]
    stream = [p for p in mine if p.image_sha256 not in already
              and p.reviewed_verdict != Verdict.DEFECT.value]
    seed = window or [float(v) for v in active.rule.normal_scores
                      or active.calibration.normal_scores]
    ai = adapt.AdaptiveInference(band_low=band["band"].low, seed_scores=seed,
                                 chunk=adapt.CHUNK, cap=max(0, adapt.LOT_CAP - len(already)))
    in_band = band["band"].classify([float(p.raw_score) for p in stream]) == "review" \
        if stream else np.zeros(0, bool)
    chunks = ai.feed(adapt.Scored(p.image_sha256, float(p.raw_score), p.verdict, bool(b))
                         for p, b in zip(stream, in_band, strict=True))
    paths = {p.image_sha256: p.image_path for p in stream}
    return {
        "chunks": chunks, "paths": paths, "band_low": band["band"].low,
        "band_high": band["band"].high, "threshold": band["threshold"],
        "method": adapt.METHOD, "candidates": len(stream), "in_band": int(ai.skipped_band),
        "reviewed_defect": len(reviewed_defect), "already_learned": len(already),
        "waiting": ai.waiting, "scored_with_other": len(preds) - len(mine),
        "cap": adapt.LOT_CAP, "chunk": adapt.CHUNK, "seeded_from": len(seed),
    }


def _stored_window(session: Any, active: Any) -> list[float]:
    """The running window an online version's threshold row ended with (empty otherwise):
    the window runs on across lots instead of restarting from the validation scores."""
    row = repo.get_threshold(session, active.threshold_id)
    if row is None or row.method != adapt.METHOD:
        return []
    return [float(v) for v in (row.params or {}).get("window_scores", ())]


def _no_chunk_words(lot: str, plan: dict[str, Any]) -> str:
    """Why nothing would be learned, with the counts that say it."""
    return (
        f"lot {lot!r} has no full chunk of {plan['chunk']} confidently normal images to learn "
        f"from: {plan['candidates']} image(s) scored with the model in use, "
        f"{plan['in_band']} of them in the review band, {plan['waiting']} confidently normal "
        f"(raw score below {plan['band_low']:.4g}), {plan['already_learned']} already learned, "
        f"{plan['reviewed_defect']} reviewed as defect; nothing was changed")


def adapt_from_lot(ctx: Kensa, project: str, lot: str,
                   progress: ProgressFn | None = None) -> dict[str, Any]:
    """Online adaptation from ``lot``: every chunk of :func:`plan_online` becomes its own bank
    version of kind ``online`` (parent: the version before), with a threshold row of method
    ``running_mean_3sigma`` (its window, mean and sigma in the params), never a silent change.

    Runs inside the ``update_bank`` job (one job: each version's parent is the previous one).
    A manual threshold is kept, as in every update (the proposal is recorded as the
    suggestion). If a chunk is refused (e.g. its images now score above the threshold the
    previous chunk proposed), the versions made so far stay and ``stopped`` says why.
    Returns the last version (as :func:`services.history.versions.update_bank`) plus
    ``versions`` (one per chunk), ``first_parent``, ``plan`` counts and ``stopped``.
    """
    from services.history.versions import update_bank

    report = progress or (lambda stage, fraction: None)
    plan = plan_online(ctx, project, lot)
    chunks = plan["chunks"]
    if not chunks:
        raise ValueError(_no_chunk_words(lot, plan))
    first_parent = get_active_model(ctx, project).bank_version
    made: list[dict[str, Any]] = []
    stopped = None
    for k, chunk in enumerate(chunks):
        def step(stage: str, fraction: float, k: int = k) -> None:
            report(f"chunk {k + 1} of {len(chunks)}: {stage}", (k + fraction) / len(chunks))

        params = {**chunk.params, "lot": lot, "chunk_index": k + 1, "chunks": len(chunks)}
        note = (f"online adaptation from lot {lot}, chunk {k + 1} of {len(chunks)}: "
                f"{len(chunk.keys)} image(s) scored below the review band "
                f"({plan['band_low']:.4g}); threshold proposed {chunk.threshold:.4g} "
                f"(running mean + 3 sigma of {chunk.params['window']} normal scores)")
        try:
            made.append(update_bank(
                ctx, project, [plan["paths"][key] for key in chunk.keys], note=note,
                progress=step, kind=StateKind.ONLINE.value,
                threshold_override={"value": chunk.threshold, "method": adapt.METHOD,
                                    "params": params}))
        except ValueError as exc:
            if not made:
                raise
            stopped = f"stopped before chunk {k + 1}: {exc}"
            break
    report("done", 1.0)
    return {**made[-1], "versions": [m["version"] for m in made], "first_parent": first_parent,
            "stopped": stopped, "plan": {k: v for k, v in plan.items()
                                         if k not in ("chunks", "paths")}}


def start_online_update(ctx: Kensa, project: str, lot: str) -> int:
    """Online adaptation from a lot, on a person's request, as one ``update_bank`` job
    (:func:`adapt_from_lot`); returns the job id. Refuses at once, in words, when the lot
    has no full chunk to learn from (the job would only fail)."""
    from services.jobs.api import submit

    plan = plan_online(ctx, project, lot)
    if not plan["chunks"]:
        raise ValueError(_no_chunk_words(lot, plan))
    active = get_active_model(ctx, project)
    return submit(ctx, "update_bank", {"name": project, "online_lot": lot, "paths": [],
                                       "kind": StateKind.ONLINE.value},
                  project_id=active.project_id)

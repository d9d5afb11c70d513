"""Production lots: a named batch of parts scored from a server folder or an uploaded zip,
then reviewed by a person and exported.

A lot IS a batch (``batches`` / ``predictions``): the same rows the CLI's ``score NAME PATH
--batch B`` writes, so drift charts and the history see lots without a second table. What this
module adds is the way in from a browser and the way out to people:

* :func:`start_lot` submits a ``score_batch`` job. A zip is saved as an upload and unpacked by
  the job (every entry checked like a data-set import: traversal, links, bombs, non-images)
  into ``$KENSA_HOME/lots/<project>/<lot>/``; a server folder must lie under the import roots
  (``KENSA_IMPORT_ROOTS``), checked at submission and again by the job.
* Re-submitting a lot resumes it: ``score_batch`` skips every image whose sha256 is already in
  the batch, and the job's result says how many were new and how many already scored.
* :func:`review` stores a person's verdict with who and when; :func:`lot_results`,
  :func:`lot_csv` and :func:`list_lots` read it back.

Validation batches (``validation-m<id>``) are a model's held-out scores, not lots: never listed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pandas as pd
from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.orm import Session

import db.repositories as repo
from db.models import Batch, Prediction, StateVersion, Threshold, Verdict
from services.context import Kensa
from services.data.gallery import thumbnail
from services.data.imports import (
    ImportLimits,
    ImportRefused,
    ImportReport,
    Rejected,
    _copy_stream,
    _inside,
    _place,
    _zip_check,
    allowed_folder,
    project_slug,
    save_upload,
)
from services.data.names import NameRefused, clean_name, lookup_name
from services.data.projects import require_project
from services.inference.batches import VALIDATION_PREFIX, get_active_model
from services.wording import model_and_bank, model_name, model_numbers

#: Where unpacked zip lots live, under ``KENSA_HOME``.
LOTS_DIR = "lots"
#: Refused entries kept in a job's result (the rest are counted).
MAX_LISTED = 100
#: Review actions a page offers, mapped to a stored verdict by :func:`decide`.
ACTIONS = ("confirm", "overrule", "good", "defect", "clear")
#: The CSV's columns, in order: everything a person needs to audit a lot outside Kensa.
CSV_COLUMNS = (
    "lot", "file", "folder", "sha256", "verdict", "raw_score", "normalized_score",
    "confidence", "reviewed_verdict", "reviewed_by", "reviewed_at", "final_verdict",
    "overruled", "model", "bank_version", "threshold", "scored_at",
)

ProgressFn = Callable[[str, float], None]


# --------------------------------------------------------------------------- names, folders


def lot_name(text: str) -> str:
    """The lot name as stored, or :class:`NameRefused` saying why (validation names are taken)."""
    name = clean_name(text, "lot")
    if name.startswith(VALIDATION_PREFIX):
        raise NameRefused(f"lot names starting with {VALIDATION_PREFIX!r} are reserved for a "
                          "model's check images; choose another name")
    return name


def lot_dir(home: Path, project: str, lot: str) -> Path:
    """``$KENSA_HOME/lots/<project>/<lot>/`` for an unpacked zip.

    The slug is readable, the short hash of the exact name keeps two lots whose names only
    differ in punctuation ("A/1", "A-1") out of each other's folders.
    """
    digest = hashlib.sha256(lot.encode()).hexdigest()[:8]
    return Path(home) / LOTS_DIR / project_slug(project) / f"{project_slug(lot)}-{digest}"


# --------------------------------------------------------------------------- zip


def _common_folder(paths: list[PurePosixPath]) -> int:
    """How many leading folders every entry shares (people zip the folder, not its files)."""
    if not paths:
        return 0
    shared = list(paths[0].parts[:-1])
    for p in paths[1:]:
        parts = p.parts[:-1]
        n = 0
        while n < min(len(shared), len(parts)) and shared[n] == parts[n]:
            n += 1
        shared = shared[:n]
    return len(shared)


def unpack_lot_zip(
    source: str | os.PathLike[str] | BinaryIO,
    destination: Path,
    limits: ImportLimits | None = None,
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Extract the image entries of an untrusted zip into ``destination``; list the rest.

    The per-entry checks are the data-set import's (``services.data.imports``: traversal,
    absolute names, links, encrypted entries, size and ratio bombs, content that is not a
    decodable image), but a lot needs no ``train/good`` layout: any images, in any folders.
    One shared top folder is dropped (``lot42/a.png`` lands as ``a.png``). A name already
    holding the same bytes is left alone (a resubmitted zip); other bytes under that name are
    refused, since predictions point at files and a file must not change under them.
    """
    limits = limits or ImportLimits()
    destination = Path(destination)
    report = ImportReport(destination)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImportRefused(f"this file is not a readable zip archive ({exc})") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise ImportRefused(
                f"the archive has {len(infos)} entries; the limit is {limits.max_entries}")
        announced = sum(i.file_size for i in infos)
        if announced > limits.max_total_bytes:
            raise ImportRefused(
                f"the archive would unpack to {announced / 1024**3:.2f} GB; the limit is "
                f"{limits.max_total_bytes / 1024**3:.2f} GB (decompression bomb?)")
        accepted: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            verdict = _zip_check(info, limits)
            if isinstance(verdict, str):
                report.rejected.append(Rejected(info.filename, verdict))
            elif verdict is not None:
                accepted.append((info, verdict))
        if not accepted:
            raise ImportRefused("the zip holds no images (PNG, JPEG, BMP or TIFF)")
        strip = _common_folder([rel for _, rel in accepted])
        destination.mkdir(parents=True, exist_ok=True)
        budget = limits.max_total_bytes
        for done, (info, rel) in enumerate(accepted):
            if progress:
                progress("unpacking the zip", done / len(accepted))
            inner = PurePosixPath(*rel.parts[strip:])
            target = destination.joinpath(*inner.parts)
            if not _inside(target, destination):  # a link planted by an earlier upload
                report.rejected.append(Rejected(info.filename, "path leaves the lot folder"))
                continue
            try:
                with archive.open(info) as src:
                    result = _copy_stream(src, target, min(info.file_size, budget))
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
                report.rejected.append(Rejected(info.filename, f"damaged entry ({exc})"))
                continue
            if isinstance(result, str):
                report.rejected.append(Rejected(info.filename, result))
                continue
            tmp, digest, size = result
            budget -= size
            _place(tmp, target, digest, str(inner), report)
    report.dataset_root = destination
    return report


# --------------------------------------------------------------------------- the job's source


@dataclass
class LotSource:
    """What a ``score_batch`` job scores, and how its scoring progress maps onto the job's."""

    path: Path
    start: float = 0.0  # the job's fraction when scoring begins (after an unzip)
    extra: dict[str, Any] = field(default_factory=dict)

    def scoring(self, fraction: float) -> float:
        return self.start + (1.0 - self.start) * fraction


def prepare_source(ctx: Kensa, payload: dict[str, Any], report: ProgressFn) -> LotSource:
    """The folder a ``score_batch`` job scores (called by its handler, in the worker).

    ``zip``: an upload (relative to ``KENSA_HOME``) unpacked into the lot's folder, then
    deleted; ``folder``: a server folder from a page, checked against the import roots again
    (the roots may have changed since submission, and a worker must not trust a payload);
    ``path``: the CLI's path, read with the operator's own rights.
    """
    if payload.get("zip"):
        upload = ctx.resolve(payload["zip"])
        assert upload is not None
        destination = lot_dir(ctx.home, payload["name"], payload["batch"])
        try:
            files = unpack_lot_zip(upload, destination,
                                   progress=lambda s, f: report(s, 0.2 * f))
        finally:
            upload.unlink(missing_ok=True)  # the upload's only use was this job
        rejected = [{"name": r.name, "reason": r.reason} for r in files.rejected]
        return LotSource(destination, 0.2, {
            "source": "zip", "unpacked": len(files.imported), "unchanged": len(files.unchanged),
            "rejected": rejected[:MAX_LISTED], "rejected_count": len(rejected)})
    if payload.get("folder"):
        return LotSource(allowed_folder(ctx, payload["folder"]), 0.0, {"source": "folder"})
    return LotSource(Path(payload["path"]), 0.0, {"source": "path"})


def start_lot(
    ctx: Kensa,
    project: str,
    name: str,
    *,
    folder: str | os.PathLike[str] | None = None,
    zip_file: BinaryIO | None = None,
) -> int:
    """Submit a ``score_batch`` job for lot ``name``; returns the job id.

    Refused at once (``ValueError`` / ``LookupError`` with a plain message, nothing queued):
    a bad name, both or neither source, a folder outside the import roots, no trained model.
    Everything else (unreadable files, a damaged zip) is the job's to report. The same name
    again resumes the lot: images already in it are skipped.
    """
    from services.jobs.api import submit

    lot = lot_name(name)
    has_folder = folder is not None and bool(str(folder).strip())
    if (zip_file is None) == (not has_folder):
        raise ImportRefused("choose either a folder or a zip file")
    with ctx.session(readonly=True) as s:
        project_id = require_project(s, project).id
    get_active_model(ctx, project)  # LookupError: no trained model, nothing to score with
    payload: dict[str, Any] = {"name": lookup_name(project), "batch": lot}
    if zip_file is not None:
        payload["zip"] = ctx.stored(save_upload(ctx, zip_file))
    else:
        assert folder is not None
        payload["folder"] = str(allowed_folder(ctx, folder))
    return submit(ctx, "score_batch", payload, project_id=project_id)


# --------------------------------------------------------------------------- reading lots


def lot_model(ctx: Kensa, project: str) -> dict[str, Any] | None:
    """The model a new lot would be scored with ("Model 2", bank version, threshold), or
    None before any finished training (the page then points at Training)."""
    try:
        active = get_active_model(ctx, project)
    except LookupError:
        return None
    with ctx.session(readonly=True) as s:
        number = model_numbers(s, active.project_id).get(active.model_version_id)
    return {"model": model_name(number), "bank_version": active.bank_version,
            "label": model_and_bank(number, active.bank_version),
            "threshold": active.rule.value}



def _lot(session: Session, project: str, lot: str) -> Batch:
    project_id = require_project(session, project).id
    batch = repo.get_batch_by_name(session, project_id, lookup_name(lot))
    if batch is None or batch.name.startswith(VALIDATION_PREFIX):
        raise LookupError(f"project {project!r} has no lot named {lot!r}")
    return batch


def _overruled() -> Any:
    """A person decided against a sure verdict (resolving an unsure one is not overruling)."""
    return and_(Prediction.reviewed_verdict.is_not(None),
                Prediction.verdict.in_((Verdict.GOOD.value, Verdict.DEFECT.value)),
                Prediction.reviewed_verdict != Prediction.verdict)


def _versions(session: Session, project_id: int, batch_ids: Iterable[int]
              ) -> dict[int, list[dict[str, Any]]]:
    """Per batch, the (model, bank version, threshold) combinations its rows were scored with.

    Usually one; more when a lot was resumed after a new model or threshold, which a reader
    of the counts must be told.
    """
    ids = list(batch_ids)
    if not ids:
        return {}
    numbers = model_numbers(session, project_id)
    stmt = (
        select(Prediction.batch_id, StateVersion.model_version_id, StateVersion.version,
               Threshold.raw_value, func.count(Prediction.id))
        .join(StateVersion, Prediction.state_version_id == StateVersion.id)
        .outerjoin(Threshold, Prediction.threshold_id == Threshold.id)
        .where(Prediction.batch_id.in_(ids))
        .group_by(Prediction.batch_id, StateVersion.model_version_id, StateVersion.version,
                  Threshold.raw_value)
        .order_by(Prediction.batch_id, StateVersion.model_version_id, StateVersion.version)
    )
    out: dict[int, list[dict[str, Any]]] = {}
    for batch_id, mv_id, version, threshold, n in session.execute(stmt):
        out.setdefault(batch_id, []).append({
            "model": model_name(numbers.get(mv_id)), "model_version_id": mv_id,
            "bank_version": version, "label": model_and_bank(numbers.get(mv_id), version),
            "threshold": None if threshold is None else float(threshold), "images": int(n)})
    return out


def _source_kind(ctx: Kensa, source: str | None) -> str:
    if source and _inside(Path(source), ctx.home / LOTS_DIR):
        return "zip"
    return "folder"


def list_lots(ctx: Kensa, project: str) -> list[dict[str, Any]]:
    """The project's lots, newest first, with their counts and the model/threshold used."""

    def n(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    with ctx.session(readonly=True) as s:
        project_row = require_project(s, project)
        batches = [b for b in repo.list_batches(s, project_row.id)
                   if not b.name.startswith(VALIDATION_PREFIX)]
        stats_stmt = (
            select(Prediction.batch_id, func.count(Prediction.id),
                   n(Prediction.verdict == Verdict.GOOD.value),
                   n(Prediction.verdict == Verdict.DEFECT.value),
                   n(Prediction.verdict == Verdict.REVIEW.value),
                   func.count(Prediction.reviewed_verdict), n(_overruled()),
                   func.max(Prediction.created_at))
            .where(Prediction.batch_id.in_([b.id for b in batches]))
            .group_by(Prediction.batch_id)
        )
        stats = {row[0]: row[1:] for row in s.execute(stats_stmt)}
        versions = _versions(s, project_row.id, stats)
        out = []
        for b in reversed(batches):
            scored, good, defect, unsure, reviewed, overruled, last = stats.get(
                b.id, (0, 0, 0, 0, 0, 0, None))
            used = versions.get(b.id, [])
            out.append({
                "name": b.name, "source": _source_kind(ctx, b.source),
                "started_at": b.started_at, "finished_at": b.finished_at, "last_scored": last,
                "scored": int(scored), "good": int(good), "defects": int(defect),
                "unsure": int(unsure), "reviewed": int(reviewed), "overruled": int(overruled),
                "versions": used,
                "model": ", ".join(v["label"] for v in used),
                "threshold": ", ".join(f"{v['threshold']:.4f}" for v in used
                                       if v["threshold"] is not None),
            })
        return out


def _folder(image_path: str, source: str | None) -> str:
    """The image's folder relative to the lot's source ("" at its top): no server paths."""
    path = Path(image_path)
    if source:
        try:
            rel = path.parent.relative_to(source)
            return "" if str(rel) == "." else rel.as_posix()
        except ValueError:
            pass
    return path.parent.name


def _filtered(stmt: Select[Any], verdict: str | Iterable[str] | None, reviewed: bool | None,
              overruled: bool | None, score_min: float | None, score_max: float | None
              ) -> Select[Any]:
    if verdict is not None:
        wanted = [verdict] if isinstance(verdict, str) else list(verdict)
        stmt = stmt.where(Prediction.verdict.in_(wanted))
    if reviewed is not None:
        column = Prediction.reviewed_verdict
        stmt = stmt.where(column.is_not(None) if reviewed else column.is_(None))
    if overruled is not None:
        stmt = stmt.where(_overruled() if overruled else ~_overruled())
    if score_min is not None:
        stmt = stmt.where(Prediction.normalized_score >= score_min)
    if score_max is not None:
        stmt = stmt.where(Prediction.normalized_score <= score_max)
    return stmt


def lot_results(
    ctx: Kensa,
    project: str,
    lot: str,
    *,
    verdict: str | Iterable[str] | None = None,
    reviewed: bool | None = None,
    overruled: bool | None = None,
    score_min: float | None = None,
    score_max: float | None = None,
) -> list[dict[str, Any]]:
    """The lot's predictions as table rows, in scoring order, filtered in the database.

    ``verdict``: the model's verdict(s); ``reviewed``: True / False for reviewed or not;
    ``overruled``: a person decided against a sure verdict; ``score_min`` / ``score_max``:
    bounds on the normalized score (0.5 = the threshold the model was validated with).
    ``image_path`` is where the thumbnail comes from (:func:`thumbnail_url`); pages show
    ``file`` and ``folder`` instead, which say nothing about the server's folders.
    """
    with ctx.session(readonly=True) as s:
        batch = _lot(s, project, lot)
        numbers = model_numbers(s, batch.project_id)
        stmt = (
            select(Prediction, StateVersion.model_version_id, StateVersion.version,
                   Threshold.raw_value)
            .join(StateVersion, Prediction.state_version_id == StateVersion.id)
            .outerjoin(Threshold, Prediction.threshold_id == Threshold.id)
            .where(Prediction.batch_id == batch.id)
        )
        stmt = _filtered(stmt, verdict, reviewed, overruled, score_min, score_max)
        rows = []
        for p, mv_id, version, threshold in s.execute(stmt.order_by(Prediction.id)):
            sure = p.verdict in (Verdict.GOOD.value, Verdict.DEFECT.value)
            rows.append({
                "lot": batch.name, "file": Path(p.image_path).name,
                "folder": _folder(p.image_path, batch.source), "sha256": p.image_sha256,
                "verdict": p.verdict, "raw_score": p.raw_score,
                "normalized_score": p.normalized_score, "confidence": p.confidence,
                "reviewed_verdict": p.reviewed_verdict, "reviewed_by": p.reviewed_by,
                "reviewed_at": p.reviewed_at,
                "final_verdict": p.reviewed_verdict or p.verdict,
                "overruled": bool(p.reviewed_verdict and sure
                                  and p.reviewed_verdict != p.verdict),
                "model": model_name(numbers.get(mv_id)), "bank_version": version,
                "threshold": None if threshold is None else float(threshold),
                "scored_at": p.created_at, "regions": len(p.regions or []),
                "image_path": p.image_path,
                "heatmap_path": str(ctx.resolve(p.heatmap_path)) if p.heatmap_path else None,
            })
        return rows


def thumbnail_url(ctx: Kensa, image_path: str, side: int = 96) -> str | None:
    """A ``data:`` URL of the image's cached thumbnail (the gallery's cache), for a table's
    image column; None when the file is gone or does not decode (the cell stays empty)."""
    data = thumbnail(ctx.home, image_path, side=side)
    return None if data is None else "data:image/jpeg;base64," + base64.b64encode(data).decode()


def lot_csv(ctx: Kensa, project: str, lot: str, **filters: Any) -> bytes:
    """The lot as CSV (UTF-8 with a BOM, so Excel opens names with accents correctly).

    Every column of :data:`CSV_COLUMNS`, reviews included; no server paths (a CSV travels).
    """
    rows = lot_results(ctx, project, lot, **filters)
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    for column in ("reviewed_at", "scored_at"):
        frame[column] = [None if v is None or pd.isna(v) else v.isoformat()
                         for v in frame[column]]
    return frame.to_csv(index=False).encode("utf-8-sig")


# --------------------------------------------------------------------------- reviews


def decide(action: str, model_verdict: str) -> str | None:
    """The verdict a review action stores: ``confirm`` keeps a sure verdict, ``overrule``
    flips it (good <-> defect), ``good`` / ``defect`` say so outright, ``clear`` removes it.

    An unsure verdict (inside the review band) can be neither confirmed nor overruled: the
    person must say good or defect.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown review action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "clear":
        return None
    if action in ("good", "defect"):
        return action
    if model_verdict not in (Verdict.GOOD.value, Verdict.DEFECT.value):
        raise ValueError("the model was unsure about this image: mark it good or defect")
    if action == "confirm":
        return model_verdict
    return Verdict.GOOD.value if model_verdict == Verdict.DEFECT.value else Verdict.DEFECT.value


def review(
    ctx: Kensa, project: str, lot: str, sha256: str, verdict: str | None, reviewer: str
) -> dict[str, Any]:
    """Store a person's verdict (``good`` / ``defect``; None clears it) with who and when.

    The model's verdict is never changed: the review sits next to it, so "how often did
    people overrule model 2" stays answerable. Returns the stored review.
    """
    if verdict not in (None, Verdict.GOOD.value, Verdict.DEFECT.value):
        raise ValueError(f"a review says good or defect, not {verdict!r}")
    who = clean_name(reviewer, "reviewer")
    with ctx.session() as s:
        batch = _lot(s, project, lot)
        prediction_id = s.scalar(select(Prediction.id).where(
            Prediction.batch_id == batch.id, Prediction.image_sha256 == sha256))
        if prediction_id is None:
            raise LookupError(f"lot {lot!r} has no image with sha256 {sha256[:12]}…")
        repo.review_prediction(s, prediction_id, verdict, by=who)
        row = s.get(Prediction, prediction_id)
        assert row is not None
        s.refresh(row)
        return {"sha256": sha256, "verdict": row.verdict,
                "reviewed_verdict": row.reviewed_verdict, "reviewed_by": row.reviewed_by,
                "reviewed_at": row.reviewed_at}


def review_many(ctx: Kensa, project: str, lot: str, rows: Iterable[dict[str, Any]],
                action: str, reviewer: str) -> tuple[int, list[str]]:
    """Apply one review action to several rows of :func:`lot_results`.

    Returns (rows reviewed, files skipped): an unsure verdict cannot be confirmed or
    overruled and is skipped by name rather than failing the whole selection.
    """
    done, skipped = 0, []
    for row in rows:
        try:
            verdict = decide(action, row["verdict"])
        except ValueError:
            skipped.append(row["file"])
            continue
        review(ctx, project, lot, row["sha256"], verdict, reviewer)
        done += 1
    return done, skipped


def when(value: datetime | None) -> str:
    """A review time for a page or a CLI line (UTC, minutes)."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


__all__ = [
    "ACTIONS", "CSV_COLUMNS", "LotSource", "decide", "list_lots", "lot_csv", "lot_dir",
    "lot_model", "lot_name", "lot_results", "prepare_source", "review", "review_many", "start_lot",
    "thumbnail_url", "unpack_lot_zip", "when",
]

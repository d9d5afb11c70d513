"""Projects: import a dataset folder into the database and summarise where a project stands.

The images table, not the folder, is what training reads afterwards: the import records every
usable image once (by sha256, so re-importing adds only what is new) and keeps the validation
problems for the Datasets page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import db.repositories as repo
from db.models import ModelVersion, Project, RunStatus
from engine.data import (
    SPLIT_ALL,
    DatasetIndex,
    ImageLoadError,
    ImageRecord,
    discover,
    load_image,
    sha256_file,
)
from services.context import Kensa
from services.data.names import clean_name, lookup_name
from services.wording import method_words, model_and_bank, model_name, model_numbers

#: The flat layout has no split; the database keeps train/val/test only. Goods become
#: training candidates, defects test images (training never uses defects).
FLAT_SPLIT = {"good": "train", "defect": "test"}


class ProjectNotFound(LookupError):
    """No project by that name (the message says how to create one)."""


@dataclass
class IndexReport:
    """What ``create_project`` did: how many images were new, which files had problems."""

    project_id: int
    name: str
    data_root: str
    created: bool
    found: int
    added: int
    problems: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def require_project(session: Session, name: str) -> Project:
    project = repo.get_project_by_name(session, lookup_name(name))
    if project is None:
        raise ProjectNotFound(
            f"no project named {name!r}; create it with `project create {name} --data DIR`"
        )
    return project


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header when Pillow can; else decode (TIFF pages, odd files)."""
    try:
        with PILImage.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any header failure: fall back to the full decoder
        h, w = load_image(path).shape[:2]
        return w, h


def _image_row(record: ImageRecord) -> dict[str, Any]:
    width, height = _image_size(record.path)
    split = FLAT_SPLIT[record.label] if record.split == SPLIT_ALL else record.split
    return {
        "path": str(record.path.resolve()),
        "sha256": sha256_file(record.path),
        "split": split,
        "label": record.label,
        "defect_type": record.defect_type,
        "mask_path": str(record.mask_path.resolve()) if record.mask_path else None,
        "width": width,
        "height": height,
    }


def create_project(ctx: Kensa, name: str, data_dir: str | Path,
                   progress: Callable[[str, float], None] | None = None,
                   refused: Iterable[tuple[str, str]] = ()) -> IndexReport:
    """Create ``name`` from a dataset folder, or re-import its folder (only new images added).

    ``refused`` names files an import did not copy, with the reason, to list among the problems.

    Discovery and hashing happen before the transaction, so the database is locked only for
    the inserts. A project that exists with another folder is refused rather than mixed.
    """
    name = clean_name(name)
    root = Path(data_dir).expanduser().resolve()
    index = discover(root)  # raises DatasetError (a ValueError) naming the folder
    rows, problems = [], [
        {"path": str(p.path), "kind": p.kind, "message": p.message} for p in index.problems
    ]
    # Files an import refused never reached the folder; listing them with the folder's own
    # problems keeps them on the Datasets page until the next re-scan of the folder.
    problems += [{"path": path, "kind": "not_imported", "message": f"{path}: {reason}"}
                 for path, reason in refused]
    for done, record in enumerate(index.records):
        if progress:  # hashing is the slow part of a large import; a job's Cancel stops here
            progress("reading and hashing images", done / max(1, len(index.records)))
        try:
            rows.append(_image_row(record))
        except (OSError, ImageLoadError) as exc:  # file vanished or changed since discovery
            problems.append({"path": str(record.path), "kind": "unreadable", "message": str(exc)})
    try:
        return _index_into_project(ctx, name, root, index.layout, rows, problems)
    except IntegrityError:
        # Someone created the same name a moment ago (two browsers, two hosts): now it exists,
        # so this becomes a re-import into it, or the plain "already imports" refusal.
        return _index_into_project(ctx, name, root, index.layout, rows, problems)


def _index_into_project(ctx: Kensa, name: str, root: Path, layout: str,
                        rows: list[dict[str, Any]], problems: list[dict[str, str]]
                        ) -> IndexReport:
    with ctx.session() as s:
        project = repo.get_project_by_name(s, name)
        created = project is None
        if project is None:
            project = repo.create_project(s, name, str(root), {"layout": layout})
        elif Path(project.data_root) != root:
            raise ValueError(
                f"project {name!r} already imports {project.data_root}, not {root}; "
                "choose another project name"
            )
        added = repo.add_images(s, project.id, rows)
        repo.add_problems(s, project.id, problems, replace=True)
        return IndexReport(project.id, name, str(root), created, len(rows), added, problems)


def list_projects(ctx: Kensa) -> list[dict[str, Any]]:
    with ctx.session(readonly=True) as s:
        return [_project_dict(p) for p in repo.list_projects(s)]


def get_project(ctx: Kensa, name: str) -> dict[str, Any]:
    with ctx.session(readonly=True) as s:
        return _project_dict(require_project(s, name))


def _project_dict(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "data_root": project.data_root,
        "created_at": project.created_at,
        "settings": project.settings,
    }


def active_model_version(session: Session, project_id: int) -> ModelVersion | None:
    """The model version scoring uses: the newest finished one (None before any training)."""
    done = repo.list_model_versions(session, project_id, status=RunStatus.DONE.value)
    return done[0] if done else None


def project_index(session: Session, project: Project) -> DatasetIndex:
    """The project's images as a ``DatasetIndex`` for training (the database is the truth)."""
    records = [
        ImageRecord(
            Path(img.path), img.split, img.label, img.defect_type,
            Path(img.mask_path) if img.mask_path else None,
        )
        for img in repo.list_images(session, project.id)
    ]
    return DatasetIndex(Path(project.data_root), "database", records, [])


def _number(metrics: dict[str, Any] | None, key: str) -> float | None:
    """A stored metric if the run produced it (None, never a made-up 0, otherwise)."""
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def project_status(ctx: Kensa, name: str) -> dict[str, Any]:
    """Everything the home page's status card shows, read in one read-only transaction."""
    with ctx.session(readonly=True) as s:
        project = require_project(s, name)
        counts = repo.image_counts(s, project.id)
        per_split: Counter[str] = Counter()
        per_label: Counter[str] = Counter()
        per_defect: Counter[str] = Counter()
        for (split, label, defect), n in counts.items():
            per_split[split] += n
            per_label[label] += n
            if label == "defect":
                per_defect[defect or "unspecified"] += n
        totals = repo.project_counts(s, project.id)
        mv = active_model_version(s, project.id)
        bank = repo.get_active_state_version(s, mv.id) if mv else None
        threshold = repo.get_active_threshold(s, bank.id) if bank else None
        versions = repo.list_model_versions(s, project.id)  # newest first
        running = [
            m for m in versions
            if m.status in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
        ]
        # the newest finished run, when it failed: the card says so (no silent fall-back)
        ended = [m for m in versions if m.status not in (RunStatus.QUEUED.value,
                                                         RunStatus.RUNNING.value)]
        failed = ended[0] if ended and ended[0].status == RunStatus.FAILED.value else None
        numbers = model_numbers(s, project.id)
        summaries = repo.batch_summaries(s, project.id)
        last = max(summaries, key=lambda b: (b.started_at, b.batch_id)) if summaries else None
        return {
            "project": _project_dict(project),
            "images": {
                "total": sum(counts.values()),
                "per_split": dict(sorted(per_split.items())),
                "per_label": dict(sorted(per_label.items())),
                "per_defect_type": dict(sorted(per_defect.items())),
            },
            "problems": totals["problems"],
            "model_versions": totals["model_versions"],
            "active_model_version": None if mv is None else {
                "id": mv.id, "algorithm": mv.algorithm, "backbone": mv.backbone,
                "params": mv.params, "metrics": mv.metrics, "finished_at": mv.finished_at,
                "number": numbers.get(mv.id),
                # "Model 2 · update 1": the model numbered within the project, and its bank
                "label": model_and_bank(numbers.get(mv.id), bank.version if bank else None),
                "separation": _number(mv.metrics, "image_auroc"),
            },
            "active_bank_version": None if bank is None else {
                "id": bank.id, "version": bank.version, "kind": bank.kind,
                "vector_count": bank.vector_count, "created_at": bank.created_at,
            },
            "active_threshold": None if threshold is None else {
                "id": threshold.id, "method": threshold.method,
                "raw_value": threshold.raw_value, "normalized_value": threshold.normalized_value,
                "method_words": method_words(threshold.method),
                "created_at": threshold.created_at,
            },
            "training": [
                {"id": m.id, "status": m.status, "stage": m.stage, "progress": m.progress,
                 "label": model_name(numbers.get(m.id))}
                for m in running
            ],
            "last_failed_training": None if failed is None else {
                "id": failed.id, "label": model_name(numbers.get(failed.id)),
                "error": failed.error or "no details were recorded",
                "finished_at": failed.finished_at,
            },
            "batches": totals["batches"],
            "predictions": totals["predictions"],
            "last_batch": None if last is None else {
                "id": last.batch_id, "name": last.name, "source": last.source,
                "started_at": last.started_at, "predictions": last.predictions,
                "defect": last.defect, "good": last.good,
            },
        }

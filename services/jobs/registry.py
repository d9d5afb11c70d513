"""Job kinds: one handler per kind of long work, the only place that knows what a kind does.

A handler is ``handler(ctx, job, report) -> dict``: it reads ``job.payload`` (JSON written at
submission), calls ``report(stage, fraction)`` often (that is also where a Cancel reaches it:
the call raises), and returns a result. ``store(result)`` is what the ``jobs`` row keeps
(results can be large: a batch's predictions are in the predictions table, not here).

``on_cancel`` and ``on_abandon`` keep rows of other tables in step with the job, in the same
transaction as the job's change: a training's ``model_versions`` row describes the model, the
job describes the work, and both must say "cancelled" or "failed" together.

Services are imported inside the handlers: they import ``services.jobs.api`` themselves.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.orm import Session

from db.models import Job, RunStatus

if TYPE_CHECKING:
    from services.context import Kensa
    from services.jobs.runner import JobInfo


class Report(Protocol):
    def __call__(self, stage: str, fraction: float) -> None: ...

    def quiet(self, stage: str, fraction: float) -> None: ...

    def cancelled(self) -> bool: ...


Handler = Callable[["Kensa", "JobInfo", Report], dict[str, Any]]


def _same(result: dict[str, Any]) -> dict[str, Any]:
    return result


@dataclass(frozen=True)
class JobKind:
    name: str
    #: what the work is called on a page ("training", "import", ...)
    title: str
    handler: Handler
    store: Callable[[dict[str, Any]], dict[str, Any]] = _same
    on_cancel: Callable[[Session, Job], None] | None = None
    #: ``on_abandon(session, job, requeued, message)``: the reaper gave up on a dead worker
    on_abandon: Callable[[Session, Job, bool, str], None] | None = None
    #: runs from the queue: a job whose worker died is retried until this many attempts
    max_attempts: int = 2


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    if kind.name in _KINDS:
        raise ValueError(f"job kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"unknown job kind {name!r}; known: {', '.join(sorted(_KINDS))}"
                          ) from None


def kinds() -> list[str]:
    return sorted(_KINDS)


# --------------------------------------------------------------------------- train


def _mv_id(job: Job | JobInfo) -> int:
    return int(job.payload["model_version_id"])


def _train(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    from services.training.project import run_training

    # Training has its own cancel path through its model_versions row (``on_cancel`` below
    # cancels both together): the quiet report only shows progress and keeps the heartbeat.
    return run_training(ctx, _mv_id(job), progress=report.quiet)


def _train_store(mv: dict[str, Any]) -> dict[str, Any]:
    metrics = mv.get("metrics") or {}
    return {
        "model_version_id": mv["id"], "status": mv["status"],
        "fit_seconds": mv.get("fit_seconds"),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        "threshold": (metrics.get("threshold") or {}).get("value"),
    }


def _train_cancel(session: Session, job: Job) -> None:
    import db.repositories as repo

    repo.cancel_model_version(session, _mv_id(job))


def _train_abandon(session: Session, job: Job, requeued: bool, message: str) -> None:
    import db.jobs as jobs_repo
    import db.repositories as repo

    if requeued:
        jobs_repo.requeue_model_version(session, _mv_id(job))
    else:
        repo.finish_model_version(session, _mv_id(job), RunStatus.FAILED.value, error=message)


register(JobKind("train", "training", _train, _train_store, _train_cancel, _train_abandon))


# --------------------------------------------------------------------------- import


def _import(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    """Folder or zip copied into the project (pages), or a folder indexed in place (CLI)."""
    from services.data.imports import import_data
    from services.data.projects import create_project

    p = job.payload
    if p.get("index"):
        return create_project(ctx, p["name"], p["index"], progress=report).as_dict()
    upload = ctx.resolve(p["zip"]) if p.get("zip") else None
    try:
        result = import_data(ctx, p["name"], zip_file=upload, folder=p.get("folder"),
                             create=bool(p.get("create")), progress=report)
    finally:
        if upload is not None and p.get("delete_zip", True):
            upload.unlink(missing_ok=True)  # the upload's only use was this job
    return result.as_dict()


register(JobKind("import", "import", _import))


# --------------------------------------------------------------------------- score_batch


def _score(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    """A folder or image (CLI ``path``, page ``folder``) or an uploaded ``zip`` (a lot)."""
    from services.inference.batches import score_batch
    from services.inference.lots import prepare_source

    p = job.payload
    source = prepare_source(ctx, p, report)  # unpacks a zip; checks a page's folder again
    report("loading the model", source.scoring(0.0))
    result = score_batch(ctx, p["name"], source.path, p["batch"],
                         progress=lambda done, total: report(
                             "scoring images", source.scoring(done / max(1, total))))
    return {**result.as_dict(), **source.extra}


def _score_store(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in result.items() if k != "predictions"}
    out["problems"] = out.get("problems", [])[:100]
    return out


register(JobKind("score_batch", "batch scoring", _score, _score_store))


# --------------------------------------------------------------------------- update_bank


def _update_bank(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    """A person's update (``paths``), or an online adaptation of lot ``online_lot``: several
    versions in a row, so they must run in ONE job (each one's parent is the one before)."""
    from services.history.versions import update_bank

    p = job.payload
    if p.get("online_lot"):  # online adaptation: one job, a new version per chunk of the lot
        from services.history.adaptation import adapt_from_lot

        return adapt_from_lot(ctx, p["name"], p["online_lot"], progress=report)
    return update_bank(ctx, p["name"], p["paths"], note=p.get("note"), progress=report,
                       force_suspect=bool(p.get("force_suspect")),
                       kind=p.get("kind") or "incremental",
                       threshold_override=p.get("threshold_override"))


register(JobKind("update_bank", "bank update", _update_bank))


# --------------------------------------------------------------------------- stress_test


def _stress(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    """Smallest defect caught and what light, blur and noise do to good parts (one model
    version's held-out good images); every level reports, so Cancel stops it within one."""
    from services.evaluation.stress import OPTIONS, run_stress

    p = job.payload
    return run_stress(ctx, p["name"], p["model_version_id"], progress=report,
                      **{k: p[k] for k in OPTIONS if k in p})


register(JobKind("stress_test", "stress test", _stress))


# --------------------------------------------------------------------------- selftest


SELFTEST_DIR = "jobs/selftest"


def _selftest(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    """Is a worker alive, and does it see the same database AND the same ``KENSA_HOME``?

    Works for ``seconds`` in small steps (reporting, so Cancel works), then writes one marker
    file per execution under ``$KENSA_HOME/jobs/selftest/``; the submitter can check that the
    file is there (a worker with another data directory would fail that check).
    """
    seconds = float(job.payload.get("seconds", 1.0))
    steps = max(1, int(seconds / 0.1))
    for i in range(steps):
        report("working", i / steps)
        time.sleep(seconds / steps)
    if job.payload.get("fail"):
        raise RuntimeError(str(job.payload["fail"]))
    folder = ctx.home / SELFTEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"job-{job.id}-attempt-{job.attempts}-pid-{os.getpid()}.txt"
    with open(marker, "x") as fh:  # "x": an execution never overwrites another's marker
        fh.write(f"{socket.gethostname()} {os.getpid()}\n")
    return {"host": socket.gethostname(), "pid": os.getpid(), "attempt": job.attempts,
            "marker": ctx.stored(marker), "seconds": seconds}


def selftest_markers(home: Path, job_id: int) -> list[Path]:
    """Marker files written by executions of selftest job ``job_id``."""
    return sorted((Path(home) / SELFTEST_DIR).glob(f"job-{job_id}-attempt-*"))


register(JobKind("selftest", "worker self-test", _selftest))


# --------------------------------------------------------------------------- export


def _export(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    """ONNX / OpenVINO files of one model version, kept only when they match the app on its
    held-out images (tens of seconds: a trace, a conversion and two scorings of each)."""
    from services.inference.export import export_model

    p = job.payload
    return export_model(ctx, p["name"], p["format"], fp16=bool(p.get("fp16")),
                        model_version_id=p["model_version_id"], progress=report)


def _export_store(result: dict[str, Any]) -> dict[str, Any]:
    """The job row keeps what the page's download needs, not the manifest's score lists."""
    return {k: v for k, v in result.items() if k != "normal_scores"}


register(JobKind("export", "export", _export, _export_store))


# --------------------------------------------------------------------------- compare_models


def _compare(ctx: Kensa, job: JobInfo, report: Report) -> dict[str, Any]:
    """Every candidate model fitted on the same shots and measured on the same held-out
    images, each in its own child process (one crash is one failed row); the pick and why.
    Creates no model version: the result IS the comparison."""
    from services.training.compare import run_comparison

    p = job.payload
    return run_comparison(ctx, p["name"], candidates=p["candidates"], shots=p.get("shots"),
                          seed=int(p.get("seed", 0)), params=p.get("params") or {},
                          progress=report, cancelled=report.cancelled)


register(JobKind("compare_models", "model comparison", _compare))

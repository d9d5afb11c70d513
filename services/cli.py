"""Kensa's command line: the same use cases the pages call.

File-based runs (no database)::

    python -m services.cli train --data DIR --out RUN_DIR [--shots K --seed S --set KEY=VALUE]
    python -m services.cli score --run RUN_DIR PATH [--json]

Projects (database under ``KENSA_HOME``, or ``DATABASE_URL``; the schema is upgraded on start)::

    python -m services.cli project create NAME --data DIR
    python -m services.cli project list | project status NAME
    python -m services.cli train NAME [--shots K --seed S --set KEY=VALUE ...]
    python -m services.cli score NAME PATH --batch BATCH
    python -m services.cli history NAME [--json]
    python -m services.cli lots NAME [--json]
    python -m services.cli explain NAME IMAGE [--html FILE] [--k 3] [--json]
    python -m services.cli drift NAME [--json] [--no-embedding] [--no-store]
    python -m services.cli detectability NAME [--model-id N] [--json]
    python -m services.cli robustness NAME [--model-id N] [--json]
    python -m services.cli export NAME --format openvino|onnx [--fp16] [--model N] [--json]
    python -m services.cli review NAME --batch B --image SHA --verdict good|defect --by WHO
    python -m services.cli rollback NAME --to VERSION
    python -m services.cli threshold set NAME VALUE
    python -m services.cli update-bank NAME PATH [PATH ...] [--note TEXT]
    python -m services.cli jobs list [NAME] [--active] | jobs cancel ID | jobs selftest
    python -m services.cli worker [--workers N]

Configured runs (``default_config.yaml`` merged with a file; every bad key listed, exit 2)::

    python -m services.cli advanced-train [--config FILE] [--data DIR] [--out RUN_DIR] [--json]
    python -m services.cli multi-task-train --config TASKS.yaml [--out DIR] [--json]
    python -m services.cli train-all [--tasks TASKS.yaml | --config FILE] [--shots K]
                                     [--seed S] [--model NAME] [--wait] [--json]
    python -m services.cli adaptive-inference --project NAME --images DIR [--lot NAME]
                                              [--dry-run] [--json]

Long commands (project create, train NAME, score NAME, update-bank, detectability,
robustness, export) run as jobs: a row in
``jobs`` with progress, heartbeat and Cancel (``jobs cancel ID`` from another terminal), run
in this process with a progress bar, or queued for a worker with ``--background``.

``train`` and ``score`` choose their mode by whether ``--data`` / ``--run`` is given.
``--json`` may come before or after the command. Errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from services.config.schema import ConfigError


def _progress_bar(enabled: bool) -> tuple[Callable[[str, float], None], Callable[[], None]]:
    """A tqdm bar on stderr driven by ``(stage, fraction)`` callbacks."""
    bar = tqdm(total=100, unit="%", file=sys.stderr, disable=not enabled,
               bar_format="{desc:<28} {percentage:3.0f}%|{bar}| {elapsed}")

    def update(stage: str, fraction: float) -> None:
        bar.set_description_str(stage)
        bar.n = round(100 * fraction)
        bar.refresh()

    return update, bar.close


def _json_default(value: object) -> str:
    """Timestamps as ISO 8601 (``2026-11-25T06:26:08+00:00``), paths and the rest as text."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _print(payload: object, as_json: bool, text: str) -> None:
    print(json.dumps(payload, indent=2, default=_json_default) if as_json else text)


def cmd_train_files(args: argparse.Namespace) -> int:
    from engine.data import discover
    from services.training.fit import train_model
    from services.training.runs import save_run
    from services.wording import count

    index = discover(args.data)
    for problem in index.problems:
        print(f"warning: {problem.path}: {problem.message}", file=sys.stderr)
    update, close = _progress_bar(not args.quiet)
    try:
        outcome = train_model(index, shots=args.shots, seed=args.seed, params=args.params,
                              progress=update)
    finally:
        close()
    digests = save_run(outcome, Path(args.out), Path(args.data), args.shots, args.seed)
    summary = {
        "run": str(Path(args.out).resolve()),
        "shots": len(outcome.shots),
        "bank_size": outcome.fit.bank_size,
        "fit_s": round(outcome.fit.fit_seconds, 2),
        "threshold": {"method": outcome.threshold.method, "value": outcome.threshold.value},
        "validation_images": len(outcome.validation.paths),
        "metrics": outcome.metrics,
        "artifacts": digests,
        "problems": [f"{p.path}: {p.message}" for p in index.problems] + outcome.skipped,
    }
    metrics = ", ".join(f"{k}={v:.3f}" for k, v in outcome.metrics.items())
    _print(summary, args.json,
           f"trained on {count(len(outcome.shots), 'image')}, "
           f"bank {outcome.fit.bank_size} vectors, "
           f"threshold {outcome.threshold.value:.4f} ({outcome.threshold.method})"
           + (f"; validation {metrics}" if metrics else "") + f"\nwrote {args.out}")
    return 0


def cmd_score_files(args: argparse.Namespace) -> int:
    from services.inference.scoring import ScoringProblem, image_files, iter_predictions
    from services.training.runs import load_run

    model, rule = load_run(Path(args.run))
    paths = image_files(Path(args.path))
    rows, problems = [], []
    with tqdm(total=len(paths), file=sys.stderr, disable=args.quiet, unit="img") as bar:
        for item in iter_predictions(model, paths, rule,
                                     progress=lambda done, total: bar.update(1)):
            if isinstance(item, ScoringProblem):
                problems.append({"path": item.path, "problem": item.message})
            else:
                rows.append(item.as_dict())
    lines = [f"{r['verdict']:>6}  {r['raw_score']:.4f}  conf {r['confidence']:.2f}  {r['path']}"
             for r in rows] + [f" ERROR  {p['path']}: {p['problem']}" for p in problems]
    _print({"threshold": rule.value, "predictions": rows, "problems": problems},
           args.json, "\n".join(lines))
    return 1 if problems and not rows else 0


# --------------------------------------------------------------------------- projects


def _ctx() -> Any:
    from services.context import Kensa

    return Kensa.create()


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _run_job(args: argparse.Namespace, kind: str, payload: dict[str, Any],
             project_id: int | None = None, ctx: Any = None) -> dict[str, Any] | None:
    """Run a job inline with a progress bar, or (``--background``) queue it and say so.

    Returns the job's full result, or None when it was only queued (the id is printed).
    """
    from services.jobs.api import submit, submit_inline

    ctx = ctx or _ctx()
    if getattr(args, "background", False):
        job_id = submit(ctx, kind, payload, project_id=project_id)
        _print({"job_id": job_id, "status": "queued"}, args.json,
               f"job {job_id} queued; follow it with `jobs list`, stop it with "
               f"`jobs cancel {job_id}`")
        return None
    update, close = _progress_bar(not args.quiet)
    try:
        _, result = submit_inline(ctx, kind, payload, project_id=project_id, echo=update)
    finally:
        close()
    return result


def cmd_project_create(args: argparse.Namespace) -> int:
    data = str(Path(args.data).expanduser().resolve())
    report = _run_job(args, "import", {"name": args.name.strip(), "index": data})
    if report is None:
        return 0
    for problem in report["problems"]:
        print(f"warning: {problem['message']}", file=sys.stderr)
    verb = "created" if report["created"] else "re-imported"
    _print(report, args.json,
           f"{verb} project {report['name']!r} (id {report['project_id']}) from "
           f"{report['data_root']}: {report['found']} images, {report['added']} new, "
           f"{len(report['problems'])} problem(s)")
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    from services.data.projects import list_projects

    projects = list_projects(_ctx())
    _print(projects, args.json,
           "\n".join(f"{p['id']:>4}  {p['name']:<24} {p['data_root']}" for p in projects)
           or "no projects yet")
    return 0


def cmd_project_status(args: argparse.Namespace) -> int:
    from services.data.projects import project_status

    status = project_status(_ctx(), args.name)
    images, model = status["images"], status["active_model_version"]
    bank, threshold = status["active_bank_version"], status["active_threshold"]
    lines = [
        f"project {args.name}: {images['total']} images {images['per_label']}, "
        f"{status['problems']} problem(s)",
        f"model: {'none' if model is None else 'v' + str(model['id'])}; "
        f"bank: {'-' if bank is None else 'v' + str(bank['version'])}; "
        f"threshold: {'-' if threshold is None else format(threshold['raw_value'], '.4f')}",
    ]
    _print(status, args.json, "\n".join(lines))
    return 0


def _preset_choice(preset: str | None) -> str | None:
    """``--preset``: absent = the project's preset marked for training ("auto"), ``none`` = no
    augmentation, else a preset's name."""
    if preset is None:
        return "auto"
    return None if preset.strip().lower() == "none" else preset


def cmd_train_project(args: argparse.Namespace) -> int:
    from services.training.project import request_training, start_training_job, train_project

    ctx = _ctx()
    if args.background:
        mv_id = request_training(ctx, args.name, args.shots, args.seed, args.params,
                                 augmentation=_preset_choice(args.preset))
        job_id = start_training_job(ctx, mv_id)
        _print({"job_id": job_id, "model_version_id": mv_id, "status": "queued"}, args.json,
               f"job {job_id} queued (model version {mv_id}); follow it with `jobs list "
               f"{args.name}`, stop it with `jobs cancel {job_id}`")
        return 0
    update, close = _progress_bar(not args.quiet)
    try:
        mv = train_project(ctx, args.name, shots=args.shots, seed=args.seed,
                           params=args.params, progress=update,
                           augmentation=_preset_choice(args.preset))
    finally:
        close()
    metrics = mv["metrics"]
    shown = ", ".join(f"{k}={metrics[k]:.3f}" for k in
                      ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "aupro")
                      if k in metrics)
    thr = metrics["threshold"]
    _print(mv, args.json,
           f"model version {mv['id']} done in {mv['fit_seconds']:.1f} s fit: "
           f"{len(metrics['shots'])} shots, threshold {thr['value']:.4f} ({thr['method']})"
           + (f"; validation {shown}" if shown else "")
           + ("; colour ignored: the good images differ in colour"
              if metrics.get("colour_ignored") else ""))
    return 0


def cmd_score_project(args: argparse.Namespace) -> int:
    from services.data.projects import get_project

    ctx = _ctx()
    project_id = get_project(ctx, args.name_or_path)["id"]  # unknown project: refused now
    payload = {"name": args.name_or_path, "path": str(Path(args.path).expanduser().resolve()),
               "batch": args.batch}
    result = _run_job(args, "score_batch", payload, project_id, ctx)
    if result is None:
        return 0
    for p in result["problems"]:
        print(f"warning: skipped {p['path']}: {p['problem']}", file=sys.stderr)
    lines = [f"{r['verdict']:>6}  {r['raw_score']:.4f}  norm {r['normalized_score']:.2f}  "
             f"conf {r['confidence']:.2f}  {r['image_path']}" for r in result["predictions"]]
    lines.append(f"batch {result['name']!r}: {result['scored']} scored, "
                 f"{result['skipped']} already scored, {len(result['problems'])} unreadable "
                 f"(bank v{result['bank_version']}, threshold {result['threshold']:.4f})")
    _print(result, args.json, "\n".join(lines))
    return 1 if result["problems"] and not result["scored"] and not result["skipped"] else 0


def _state(in_use: bool, active: bool) -> str:
    return "IN USE" if in_use else ("active" if active else "      ")


def cmd_history(args: argparse.Namespace) -> int:
    from services.history.versions import history

    h = history(_ctx(), args.name)
    lines = [f"project {h['project']}  (active model version: {h['active_model_version']})",
             "runs:"]
    for r in h["runs"]:
        why = r["error"] or r["job_error"]
        lines.append(f"  m{r['model_version_id']:<4} {r['algorithm']:<18} {r['status']:<9} "
                     f"job {r['job_id'] or '-'} {r['job_status'] or '-':<9} "
                     f"{_fmt_time(r['created_at'])}  {_fmt_time(r['finished_at'])}"
                     + (f"  {why}" if why and r["status"] in ("failed", "cancelled") else ""))
    lines.append("memory bank versions:")
    for b in h["memory_bank_versions"]:
        parent = f"v{b['parent']}" if b["parent"] else "-"
        lines.append(f"  m{b['model_version_id']} v{b['version']:<3} {b['kind']:<12} "
                     f"parent {parent:<4} {b['vector_count']:>7} x {b['dim']:<4} "
                     f"{b['sha256'][:12]}  {'ACTIVE' if b['active'] else '      '}  "
                     f"{_fmt_time(b['created_at'])}  {b['note'] or ''}")
    lines.append("thresholds:")
    for t in h["thresholds"]:
        norm = "-" if t["normalized_value"] is None else f"{t['normalized_value']:.3f}"
        lines.append(f"  #{t['id']:<4} m{t['model_version_id']} bank v{t['bank_version']:<3} "
                     f"{t['method']:<13} raw {t['raw_value']:<10.4f} norm {norm:<6} "
                     f"{_state(t['in_use'], t['active'])}  by {t['created_by'] or '-':<12}"
                     f" {_fmt_time(t['created_at'])}")
    lines.append("batches:")
    for b in h["batches"]:
        lines.append(f"  {b['name']:<24} {b['predictions']:>5} predictions "
                     f"({b['defect']} defect, {b['good']} good)  {_fmt_time(b['started_at'])}")
    lines.append(f"predictions: {h['predictions_count']}")
    _print(h, args.json, "\n".join(lines))
    return 0


def cmd_lots(args: argparse.Namespace) -> int:
    """Production lots of a project (the Lots page's list): counts and the model used."""
    from services.inference.lots import list_lots

    lots = list_lots(_ctx(), args.name)
    lines = [f"{lot['name']:<24} {lot['scored']:>5} images  {lot['defects']:>4} defect  "
             f"{lot['reviewed']:>4} reviewed  {lot['overruled']:>4} overruled  "
             f"{lot['model'] or '-'}  threshold {lot['threshold'] or '-'}  "
             f"{_fmt_time(lot['last_scored'])}" for lot in lots] or ["no lots yet"]
    _print(lots, args.json, "\n".join(lines))
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """Drift of every lot against the model's reference (the Drift page's numbers); the
    report is stored in ``drift_reports`` unless ``--no-store``."""
    from services.monitoring.drift import drift_overview

    overview = drift_overview(_ctx(), args.name, embedding=not args.no_embedding,
                              store=not args.no_store)
    lines = [overview.headline]
    for lot in overview.lots:
        lines.append(f"{lot.name:<24} {lot.verdict:<7} {lot.n_images:>5} images  median "
                     f"{lot.median:.4g}  p95 {lot.p95:.4g}  reject {lot.reject_rate:.0%}  "
                     f"{lot.model_label}")
        lines += [f"    - {alert}" for alert in lot.alerts]
    _print(overview.as_json(), args.json, "\n".join(lines))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Why one image is good or a defect: verdict, confidence, regions with their nearest
    training patches; ``--html FILE`` writes the self-contained report."""
    from services.inference.explain import explain_image, report_html

    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"{image}: no such image file")
    e = explain_image(_ctx(), args.name, path=image, k=args.k)
    if args.html:
        Path(args.html).write_text(report_html(e), encoding="utf-8")
    lines = [e.summary, *(f"  - {w}" for w in e.confidence_words)]
    for r in e.regions:
        lines.append(f"region {r.index}: {r.kind} box {r.box} {r.area_px} px "
                     f"({r.area_pct:.2f} %) peak {r.peak:.4g} mean {r.mean:.4g}")
        lines += [f"    near {n.file_name} row {n.row} col {n.col} ({n.view}) "
                  f"distance {n.distance:.4g}" for n in r.nearest]
    if args.html:
        lines.append(f"report written to {args.html}")
    _print(e.as_json(), args.json, "\n".join(lines))
    return 0


def _stress(args: argparse.Namespace, part: str) -> dict[str, Any] | None:
    """Run the ``part`` of the stress test as a job (inline, or ``--background``)."""
    from services.evaluation.stress import KIND, stress_payload

    options: dict[str, Any] = {"parts": [part], "max_images": args.max_images,
                               "seed": args.seed}
    for key in ("areas", "contrasts", "strengths", "transforms"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    if options.get("areas") is not None:  # typed in percent, as the page and rows show them
        options["areas"] = [a / 100 for a in options["areas"]]
    ctx = _ctx()
    payload = stress_payload(ctx, args.name, args.model_id, **options)
    return _run_job(args, KIND, payload, ctx=ctx)


def _stress_header(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("model_version_id", "model_label", "threshold", "n_images",
                                   "images", "skipped", "seed")}


def cmd_detectability(args: argparse.Namespace) -> int:
    """Detection rate of synthetic defects by area and contrast on held-out good images, and
    the smallest defect caught in at least 9 of 10 images per contrast."""
    from services.evaluation.stress import contrast_words, detectability_sentences

    result = _stress(args, "detectability")
    if result is None:
        return 0
    det = result["detectability"]
    lines = [f"{result['model_label']} (threshold {result['threshold']:.4g}), "
             f"{result['n_images']} held-out good image(s) with painted {det['kind']} defects",
             f"{'area %':>8} {'(painted %)':>12}  {'contrast':<26} {'caught':>8}  rate"]
    lines += [f"{r['area']:>8.3g} {r['area_realised']:>12.3g}  "
              f"{contrast_words(r['contrast']):<26} {r['detected']:>3} of {r['n']:<2}"
              f"  {r['detection_rate']:.0%}" for r in det["rows"]]
    lines += detectability_sentences(det)
    _print({**_stress_header(result), **det}, args.json, "\n".join(lines))
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    """Scores of held-out good images under each light, blur and noise change at growing
    strength, and the changes that push a good part over the threshold."""
    from services.evaluation.stress import robustness_sentences

    result = _stress(args, "robustness")
    if result is None:
        return 0
    rob = result["robustness"]
    lines = [f"{result['model_label']} (threshold {result['threshold']:.4g}), "
             f"{result['n_images']} held-out good image(s)",
             f"{'change':<24} {'strength':>8} {'mean score':>11} {'highest':>10}  over"]
    lines += [f"{r['title']:<24} {r['strength']:>8.2g} {r['mean_score']:>11.4g} "
              f"{r['max_score']:>10.4g}  {r['share_over']:.0%}" for r in rob["rows"]]
    lines += robustness_sentences(rob)
    _print({**_stress_header(result), **rob}, args.json, "\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """ONNX or OpenVINO files of a model, kept only when their normalized scores match the
    app's on the held-out images within 1e-3 (else refused, naming the worst image)."""
    from services.inference.export import KIND, export_request

    ctx = _ctx()
    payload = export_request(ctx, args.name, args.format, args.fp16, args.model)
    result = _run_job(args, KIND, payload, project_id=payload["project_id"], ctx=ctx)
    if result is None:
        return 0
    keys = ("project", "model_label", "model_version_id", "bank_version", "format", "fp16",
            "folder", "main_file", "files", "parity_max_abs_diff", "parity_worst_image",
            "n_images", "n_other_size", "input", "threshold")
    folder = ctx.resolve(result["folder"])
    lines = [f"{result['model_label']} exported as {args.format}"
             + (" FP16" if args.fp16 else "") + f" to {folder}",
             *(f"  {name}  sha256 {digest[:12]}…" for name, digest in
               sorted(result["files"].items())),
             result["message"]]
    if result["n_other_size"]:
        lines.append(f"{result['n_other_size']} held-out image(s) of another size were not "
                     f"checked: the file takes {result['input']['shape'][2]}x"
                     f"{result['input']['shape'][3]} only")
    _print({k: result[k] for k in keys}, args.json, "\n".join(lines))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """A person's verdict on one image of a lot, stored with who and when (as on the page)."""
    from services.inference.lots import review, when

    verdict = None if args.verdict == "clear" else args.verdict
    stored = review(_ctx(), args.name, args.batch, args.image, verdict, args.by)
    _print(stored, args.json,
           f"{stored['sha256'][:12]}: model {stored['verdict']}, reviewed "
           f"{stored['reviewed_verdict'] or '(cleared)'} by {stored['reviewed_by'] or '-'} "
           f"{when(stored['reviewed_at'])}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from services.history.versions import rollback

    bank = rollback(_ctx(), args.name, args.to, note=args.note)
    thr = bank["threshold"]
    _print(bank, args.json,
           f"bank v{bank['version']} (rollback to v{bank['parent']}) is active"
           + (f"; threshold {thr['raw_value']:.4f} ({thr['method']})" if thr else ""))
    return 0


def cmd_threshold_set(args: argparse.Namespace) -> int:
    from services.history.versions import set_threshold

    row = set_threshold(_ctx(), args.name, args.value, created_by=args.by,
                        confirm_extreme=args.confirm)
    _print(row, args.json,
           f"threshold {row['raw_value']:.4f} (normalized {row['normalized_value']:.3f}) is "
           f"active for bank v{row['bank_version']}; the previous one is kept in history")
    return 0


def cmd_update_bank(args: argparse.Namespace) -> int:
    from services.history.versions import SUSPECT_PHRASE, bank_update_payload

    ctx = _ctx()
    payload, project_id = bank_update_payload(ctx, args.name, args.paths, args.note,
                                              force_suspect=args.force_suspect)
    try:
        bank = _run_job(args, "update_bank", payload, project_id, ctx)
    except Exception as exc:  # noqa: BLE001 - re-raised with the command line's own hint
        if SUSPECT_PHRASE in str(exc):
            raise RuntimeError(f"{exc} (--force-suspect)") from exc
        raise
    if bank is None:
        return 0
    for p in bank["problems"]:
        print(f"warning: skipped {p['path']}: {p['problem']}", file=sys.stderr)
    thr = bank["threshold"]
    _print(bank, args.json,
           f"bank v{bank['version']} (parent v{bank['parent']}, {bank['vector_count']} vectors, "
           f"{len(bank['source_images'])} new image(s)) is active; threshold "
           f"{thr['raw_value']:.4f} ({thr['method']}): {bank['threshold_note']}"
           + (f"\nadded on your confirmation: {len(bank['forced'])} image(s) that scored "
              "as defects" if bank["forced"] else ""))
    return 0


def _job_line(j: dict[str, Any]) -> str:
    pct = f"{100 * j['progress']:3.0f}%"
    what = j["error"] if j["status"] in ("failed", "cancelled") and j["error"] else j["stage"]
    return (f"{j['id']:>5}  {j['kind']:<12} {j['status']:<9} {pct}  try {j['attempts']}/"
            f"{j['max_attempts']}  {_fmt_time(j['created_at'])}  {j['worker'] or '-':<28} "
            f"{what or ''}")


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from services.jobs.api import list_jobs

    jobs = list_jobs(_ctx(), args.name, active=args.active, limit=args.limit)
    _print(jobs, args.json, "\n".join(_job_line(j) for j in jobs) or "no jobs")
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from services.jobs.api import cancel

    state = cancel(_ctx(), args.id)
    if state is None:
        raise ValueError(f"job {args.id} had already ended")
    text = ("cancelled" if state == "cancelled"
            else "asked to stop; it stops at its next progress report")
    _print({"id": args.id, "status": state}, args.json, f"job {args.id} {text}")
    return 0


def cmd_jobs_selftest(args: argparse.Namespace) -> int:
    from services.jobs.api import submit, wait

    ctx = _ctx()
    job = wait(ctx, submit(ctx, "selftest", {"seconds": args.seconds}), timeout_s=args.timeout)
    if job["status"] != "done":
        raise RuntimeError(f"self-test job {job['id']} {job['status']}: {job['error']}")
    marker = ctx.resolve(job["result"]["marker"])
    if not marker.is_file():
        raise RuntimeError(f"job {job['id']} ran on {job['worker']}, but its file {marker} is "
                           "not visible here: that worker uses another KENSA_HOME")
    _print(job, args.json, f"job {job['id']} done by {job['worker']} "
           f"(database and KENSA_HOME shared)")
    return 0


# --------------------------------------------------------------------------- config runs


def _config_overrides(**flags: Any) -> dict[str, Any]:
    """Command-line flags as the last config layer (``None``: not given, the config's value
    stands): ``model=NAME``, ``shots=K``, ``seed=S``, ``data=DIR``."""
    out: dict[str, Any] = {}
    if flags.get("model") is not None:
        out["model"] = {"name": flags["model"]}
    data = {key: flags[key] for key in ("shots", "seed") if flags.get(key) is not None}
    if flags.get("data") is not None:
        data["path"] = flags["data"]
    if data:
        out["data"] = data
    return out


def _file_run_text(summary: dict[str, Any]) -> str:
    """What ``advanced-train`` prints: what was trained, the threshold, the metrics."""
    metrics, thr = summary["metrics"], summary["threshold"]
    shown = ", ".join(f"{k}={metrics[k]:.3f}" for k in
                      ("image_auroc", "image_ap", "f1_at_threshold", "precision_at_threshold",
                       "recall_at_threshold", "pixel_auroc", "aupro") if k in metrics)
    on = {"synthetic": " (on synthetic defects painted into held-out goods)",
          "held-out": ""}.get(summary["metrics_on"] or "", "")
    aug = summary["augmentation"]
    return "\n".join(filter(None, [
        f"trained {summary['algorithm']} on {summary['shots']} of {summary['images']} images"
        + (f" + {aug['augmented_images']} augmented copies" if aug else "")
        + f": bank {summary['bank_size']} vectors, fit {summary['fit_s']:.1f} s, "
          f"{summary['seconds']:.1f} s in all",
        f"threshold {thr['value']:.4f} ({thr['method']})",
        f"validation on {summary['validation_images']} held-out images{on}: {shown}"
        if shown else None,
        f"wrote {summary['run']}",
    ]))


def cmd_advanced_train(args: argparse.Namespace) -> int:
    """File-based training with a full config (model + params, augmentation copies,
    threshold rule), written as a run folder that ``score --run`` reads."""
    from services.config import load_config
    from services.config.runs import file_run_plan, run_file_training

    config = load_config(args.config, _config_overrides(data=args.data))
    plan = file_run_plan(config)  # refusals (no folder, a preset) before any work
    out = Path(args.out) if args.out else Path("runs") / plan.data.name
    update, close = _progress_bar(not args.quiet)
    try:
        result = run_file_training(config, out, progress=update)
    finally:
        close()
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    summary = {**result.summary(), "config": args.config}
    _print(summary, args.json, _file_run_text(summary))
    return 0


def _task_row(name: str, seconds: float, summary: dict[str, Any] | None = None,
              error: str | None = None) -> dict[str, Any]:
    """One line of the multi-task summary (JSON and table)."""
    if summary is None:
        return {"task": name, "status": "failed", "error": error, "images": None,
                "image_auroc": None, "f1": None, "threshold": None,
                "seconds": round(seconds, 2), "run": None, "metrics_on": None}
    metrics = summary["metrics"]
    return {"task": name, "status": "done", "error": None, "images": summary["images"],
            "image_auroc": metrics.get("image_auroc"), "f1": metrics.get("f1_at_threshold"),
            "threshold": summary["threshold"]["value"],
            "threshold_method": summary["threshold"]["method"],
            "seconds": round(seconds, 2), "run": summary["run"],
            "metrics_on": summary["metrics_on"]}


def _task_table(rows: list[dict[str, Any]]) -> str:
    """The summary table: task, images, image AUROC, F1 at the threshold, threshold, seconds,
    status; a ``*`` marks numbers measured on synthetic defects."""
    width = max([4, *(len(r["task"]) for r in rows)])
    lines = [f"{'task':<{width}}  {'images':>6}  {'AUROC':>6}  {'F1':>6}  {'threshold':>10}  "
             f"{'seconds':>7}  status"]
    for r in rows:
        star = "*" if r["metrics_on"] == "synthetic" else " "
        auroc = "-" if r["image_auroc"] is None else f"{r['image_auroc']:.3f}{star}"
        f1 = "-" if r["f1"] is None else f"{r['f1']:.3f}{star}"
        thr = "-" if r["threshold"] is None else f"{r['threshold']:.4f}"
        status = "done" if r["status"] == "done" else f"FAILED: {r['error']}"
        lines.append(f"{r['task']:<{width}}  {r['images'] if r['images'] is not None else '-':>6}"
                     f"  {auroc:>6}  {f1:>6}  {thr:>10}  {r['seconds']:>7.1f}  {status}")
    if any(r["metrics_on"] == "synthetic" for r in rows):
        lines.append("* on synthetic defects painted into held-out good images (the task had "
                     "no defect images to hold out)")
    return "\n".join(lines)


def cmd_multi_task_train(args: argparse.Namespace) -> int:
    """Several file trainings from one tasks file, one after another in this process, one run
    folder each (``OUT/<task>``); a failing task is reported and the others still run."""
    import time

    from services.config import ConfigError, load_tasks
    from services.config.runs import file_run_plan, run_file_training

    tasks = load_tasks(args.config)
    problems: list[str] = []
    for task in tasks:  # every task's refusals before the first minute of training
        try:
            file_run_plan(task.config)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    out_root = Path(args.out or "runs")
    rows = []
    for n, task in enumerate(tasks, 1):
        started = time.perf_counter()
        update, close = _progress_bar(not args.quiet)
        try:
            result = run_file_training(
                task.config, out_root / task.folder,
                progress=lambda stage, f, n=n, name=task.name, bar=update: bar(
                    f"{n}/{len(tasks)} {name}: {stage}"[:28], f))
            summary = result.summary()
            rows.append(_task_row(task.name, time.perf_counter() - started, summary))
            for problem in result.problems:
                print(f"warning: task {task.name}: {problem}", file=sys.stderr)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in the table; the others still run
            _debug_traceback()
            rows.append(_task_row(task.name, time.perf_counter() - started,
                                  error=error_line(exc)))
            print(f"error: task {task.name}: {error_line(exc)}", file=sys.stderr)
        finally:
            close()
    failed = sum(r["status"] != "done" for r in rows)
    _print({"tasks": rows, "failed": failed, "out": str(out_root.resolve())}, args.json,
           _task_table(rows) + f"\n{len(rows) - failed} of {len(rows)} task(s) trained into "
           f"{out_root}")
    return 1 if failed else 0


def _wait_for_jobs(ctx: Any, queued: list[dict[str, Any]], quiet: bool,
                   timeout_s: float) -> list[dict[str, Any]]:
    """Poll the queued jobs until every one has ended, with one progress bar for them all;
    returns the final job rows (TimeoutError after ``timeout_s`` > 0, the jobs go on)."""
    import time

    from services.jobs.api import get_job

    update, close = _progress_bar(not quiet)
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    try:
        while True:
            jobs = [get_job(ctx, q["job_id"]) for q in queued]
            active = [j for j in jobs if j["status"] in ("queued", "running")]
            fraction = sum(1.0 if j not in active else float(j["progress"] or 0.0)
                           for j in jobs) / max(1, len(jobs))
            running = next((j for j in active if j["status"] == "running"), None)
            stage = f"{len(jobs) - len(active)}/{len(jobs)} done" + (
                f"; job {running['id']}: {running['stage'] or ''}" if running else "")
            update(stage[:28], fraction)
            if not active:
                return jobs
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job(s) {', '.join(str(j['id']) for j in active)} still "
                    f"{'/'.join(sorted({j['status'] for j in active}))} after {timeout_s:g} s; "
                    "they go on (is a worker running? `jobs selftest`)")
            time.sleep(0.5)
    finally:
        close()


def _job_result_line(project: str, job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    if job["status"] != "done":
        return f"job {job['id']} {project}: {job['status']}: {job['error'] or '-'}"
    metrics = result.get("metrics") or {}
    thr = result.get("threshold")
    return (f"job {job['id']} {project}: done, model version {result.get('model_version_id')}"
            + (f", threshold {thr:.4f}" if isinstance(thr, int | float) else "")
            + (f", image AUROC {metrics['image_auroc']:.3f}" if "image_auroc" in metrics
               else ""))


def cmd_train_all(args: argparse.Namespace) -> int:
    """Queue one training job per project (or per task of ``--tasks``) through the Training
    page's services; ``--wait`` follows them to the end."""
    from services.config import ConfigError, load_config, load_tasks
    from services.config.runs import import_folder, project_run_plan, queue_project_training
    from services.data.projects import list_projects

    ctx = _ctx()
    overrides = _config_overrides(model=args.model, shots=args.shots, seed=args.seed)
    if args.tasks:
        if args.config:
            raise ValueError("give --tasks or --config, not both (a tasks file has its own "
                             "defaults section)")
        entries = [(t.name, t.config) for t in load_tasks(args.tasks, overrides)]
    else:
        config = load_config(args.config, overrides)
        data = config.values["data"]
        unused = [key for key, default in (("path", None), ("layout", "auto"))
                  if data[key] != default]
        if unused:  # said, not ignored: these keys only describe a folder to import
            raise ConfigError([f"{config.where('data.' + key)}: train-all over every project "
                               "imports no folder; name folders per task with --tasks"
                               for key in unused])
        entries = [(p["name"], config) for p in list_projects(ctx)]
        if not entries:
            raise ValueError("no projects yet: create one with `project create NAME --data "
                             "DIR`, or give --tasks FILE with data folders")
    plans, problems = [], []
    for name, config in entries:  # refusals of every entry before anything is queued
        try:
            plans.append((name, project_run_plan(config)))
        except ConfigError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    queued: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for name, plan in plans:
        try:
            if plan.data is not None:
                update, close = _progress_bar(not args.quiet)
                try:
                    report = import_folder(ctx, name, plan, echo=update)
                finally:
                    close()
                print(f"imported {report['found']} images into {name!r} "
                      f"({report['added']} new)", file=sys.stderr)
            queued.append(queue_project_training(ctx, name, plan))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the other projects are queued
            _debug_traceback()
            failed.append({"project": name, "error": error_line(exc)})
            print(f"error: {name}: {error_line(exc)}", file=sys.stderr)
    lines = [f"job {q['job_id']} queued: {q['project']} (model version "
             f"{q['model_version_id']})" for q in queued]
    lines += [f"not queued: {f['project']}: {f['error']}" for f in failed]
    payload: dict[str, Any] = {"queued": queued, "failed": failed}
    if args.wait and queued:
        jobs = _wait_for_jobs(ctx, queued, args.quiet, args.timeout)
        payload["jobs"] = jobs
        lines += [_job_result_line(q["project"], j) for q, j in zip(queued, jobs, strict=True)]
        failed_jobs = [j for j in jobs if j["status"] != "done"]
    else:
        failed_jobs = []
        if queued:
            lines.append("follow them with `jobs list`; a worker runs them "
                         "(`worker`, or the local one started on submit)")
    _print(payload, args.json, "\n".join(lines))
    return 1 if failed or failed_jobs else 0


def _adapt_note(sha: str, raw: float, verdict: str, plan: dict[str, Any],
                chunk_of: dict[str, int]) -> str:
    """Why one image of the lot was or was not learned, in words."""
    if sha in chunk_of:
        return f"learns (chunk {chunk_of[sha]})"
    if verdict != "good":
        return "not learned: defect"
    if plan["band_low"] <= raw < plan["band_high"]:
        return "not learned: in the review band"
    if raw < plan["band_low"]:
        return (f"confidently normal, not learned now: no full chunk of {plan['chunk']} yet, "
                f"already learned, or over the lot's cap of {plan['cap']}")
    return "not learned"


def cmd_adaptive_inference(args: argparse.Namespace) -> int:
    """Score a folder as one lot, then let online adaptation (``engine.adapt`` through
    ``services.history.adaptation``) decide which confidently normal images feed the bank;
    each chunk learned is a new, visible bank version (``rollback`` undoes it)."""
    from services.data.projects import get_project
    from services.history.adaptation import plan_online
    from services.inference.batches import batch_predictions

    ctx = _ctx()
    project = get_project(ctx, args.project)  # unknown project: refused now
    images = Path(args.images).expanduser()
    if not images.exists():
        raise FileNotFoundError(f"{images}: no such file or folder")
    lot = args.lot or f"adaptive {datetime.now():%Y-%m-%d %H:%M:%S}"
    scored = _run_job(args, "score_batch", {"name": project["name"],
                                            "path": str(images.resolve()), "batch": lot},
                      project["id"], ctx)
    assert scored is not None  # inline: the full result
    for p in scored["problems"]:
        print(f"warning: skipped {p['path']}: {p['problem']}", file=sys.stderr)
    plan = plan_online(ctx, project["name"], lot)
    chunk_of = {sha: k for k, chunk in enumerate(plan["chunks"], 1) for sha in chunk.keys}
    now = {r["image_sha256"] for r in scored["predictions"]}
    verdicts = [{**{k: r[k] for k in ("image_path", "image_sha256", "verdict", "raw_score",
                                     "normalized_score", "confidence", "reviewed_verdict")},
                 "scored_now": r["image_sha256"] in now,
                 "adaptation": ("not learned: reviewed as defect"
                                if r["reviewed_verdict"] == "defect" else
                                _adapt_note(r["image_sha256"], r["raw_score"], r["verdict"],
                                            plan, chunk_of))}
                for r in batch_predictions(ctx, project["name"], lot)]  # the whole lot
    lines = [f"lot {lot!r}: {scored['scored']} scored, {scored['skipped']} already scored "
             f"(bank v{scored['bank_version']}, threshold {scored['threshold']:.4f}); "
             f"review band {plan['band_low']:.4f} to {plan['band_high']:.4f}"]
    lines += [f"{v['verdict']:>6}  {v['raw_score']:.4f}  conf {v['confidence']:.2f}  "
              f"{Path(v['image_path']).name}  {v['adaptation']}" for v in verdicts]
    counts = {k: plan[k] for k in ("candidates", "in_band", "reviewed_defect",
                                   "already_learned", "waiting", "chunk", "cap")}
    adaptation: dict[str, Any] = {"adapted": False, "plan": counts}
    code = 0
    if not plan["chunks"]:
        lines.append(
            f"not adapted: no full chunk of {plan['chunk']} confidently normal images (raw "
            f"score below {plan['band_low']:.4f}): {plan['waiting']} waiting, "
            f"{plan['in_band']} in the review band, {plan['already_learned']} already "
            f"learned; no bank version was made")
    elif args.dry_run:
        lines.append(f"would adapt: {len(plan['chunks'])} chunk(s) of {plan['chunk']} images, "
                     f"one new bank version each (--dry-run: nothing changed)")
        adaptation["would_learn"] = [list(c.keys) for c in plan["chunks"]]
    else:
        try:
            bank = _run_job(args, "update_bank",
                            {"name": project["name"], "online_lot": lot, "paths": [],
                             "kind": "online"}, project["id"], ctx)
        except Exception as exc:  # noqa: BLE001 - the lot is scored; say why nothing adapted
            _debug_traceback()
            adaptation["error"] = error_line(exc)
            lines.append(f"not adapted: {error_line(exc)}")
            code = 1
        else:
            assert bank is not None
            thr = bank["threshold"]
            adaptation.update(adapted=True, versions=bank["versions"],
                              first_parent=bank["first_parent"], stopped=bank["stopped"],
                              vector_count=bank["vector_count"], threshold=thr,
                              threshold_note=bank["threshold_note"])
            lines.append(
                f"adapted: bank version(s) {', '.join('v' + str(v) for v in bank['versions'])}"
                f" (kind online, from v{bank['first_parent']}), "
                f"{sum(len(c.keys) for c in plan['chunks'])} image(s) learned, "
                f"{bank['vector_count']} vectors; threshold {thr['raw_value']:.4f} "
                f"({thr['method']}); undo with `rollback {project['name']} --to "
                f"{bank['first_parent']}`")
            if bank["stopped"]:
                lines.append(f"  {bank['stopped']}")
    _print({"lot": lot, "scored": scored["scored"], "skipped": scored["skipped"],
            "bank_version": scored["bank_version"], "threshold": scored["threshold"],
            "review_band": [plan["band_low"], plan["band_high"]], "predictions": verdicts,
            "problems": scored["problems"], "adaptation": adaptation},
           args.json, "\n".join(lines))
    return code


def cmd_worker(args: argparse.Namespace) -> int:
    from services.jobs.worker import main as worker_main

    return worker_main(["--workers", str(args.workers), "--idle-exit", str(args.idle_exit)])


def cmd_train(args: argparse.Namespace) -> int:
    if args.data is not None:
        if args.name is not None or args.out is None:
            raise ValueError("file mode is `train --data DIR --out RUN_DIR`; "
                             "project mode is `train NAME`")
        return cmd_train_files(args)
    if args.name is None or args.out is not None:
        raise ValueError("give a project name (`train NAME`) or `--data DIR --out RUN_DIR`")
    return cmd_train_project(args)


def cmd_score(args: argparse.Namespace) -> int:
    if args.run is not None:
        if args.path is not None or args.batch is not None:
            raise ValueError("file mode is `score --run RUN_DIR PATH` (one path, no batch)")
        args.path = args.name_or_path
        return cmd_score_files(args)
    if args.path is None or args.batch is None:
        raise ValueError("project mode is `score NAME PATH --batch BATCH`")
    return cmd_score_project(args)


def _param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value when it parses (``image_size=96``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _floats(text: str) -> list[float]:
    """``0.5,2,5`` as numbers (an argparse type: a bad item is named)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}"
                                          ) from None


BACKGROUND_HELP = "queue it for a worker and return at once (default: run it here)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.cli",
                                     description="Kensa few-shot defect inspection")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output on stdout")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, parent: Any = sub, **kw: Any) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[common], **kw)

    project = sub.add_parser("project", help="create, list or inspect projects")
    psub = project.add_subparsers(dest="action", required=True)
    create = add("create", psub, help="import a dataset folder (again: adds new images only)")
    create.add_argument("name")
    create.add_argument("--data", required=True, help="dataset folder (MVTec or flat layout)")
    create.add_argument("--background", action="store_true", help=BACKGROUND_HELP)
    create.set_defaults(func=cmd_project_create)
    add("list", psub, help="list projects").set_defaults(func=cmd_project_list)
    status = add("status", psub, help="images, active model, bank, threshold, last batch")
    status.add_argument("name")
    status.set_defaults(func=cmd_project_status)

    train = add("train", help="train a project (NAME) or a file run (--data --out)")
    train.add_argument("name", nargs="?", help="project name")
    train.add_argument("--data", help="file mode: dataset folder (MVTec or flat layout)")
    train.add_argument("--out", help="file mode: run folder to write")
    train.add_argument("--shots", type=int, default=None, help="good images to train on")
    train.add_argument("--seed", type=int, default=0, help="which shots (and coreset seed)")
    train.add_argument("--set", dest="param_items", action="append", type=_param, default=[],
                       metavar="KEY=VALUE", help="model parameter, e.g. --set image_size=256")
    train.add_argument("--preset", default=None, metavar="NAME",
                       help="augmentation preset whose copies training adds (project mode; "
                            "default: the one marked for training, 'none': no copies)")
    train.add_argument("--background", action="store_true",
                       help=BACKGROUND_HELP + " (project mode)")
    train.set_defaults(func=cmd_train)

    score = add("score", help="score an image or folder into a batch (or with --run)")
    score.add_argument("name_or_path", metavar="NAME", help="project name (file mode: PATH)")
    score.add_argument("path", nargs="?", metavar="PATH", help="image file or folder")
    score.add_argument("--batch", help="batch name (created if new; rescoring skips known)")
    score.add_argument("--run", help="file mode: run folder written by train --out")
    score.add_argument("--background", action="store_true",
                       help=BACKGROUND_HELP + " (project mode)")
    score.set_defaults(func=cmd_score)

    hist = add("history", help="bank versions, thresholds and batches of a project")
    hist.add_argument("name")
    hist.set_defaults(func=cmd_history)

    lots = add("lots", help="production lots of a project: counts, reviews, model used")
    lots.add_argument("name")
    lots.set_defaults(func=cmd_lots)

    drift = add("drift", help="drift of each lot against the model's reference, with alerts")
    drift.add_argument("name")
    drift.add_argument("--no-embedding", action="store_true",
                       help="skip the patch-feature (MMD) test, which loads the model")
    drift.add_argument("--no-store", action="store_true",
                       help="report only; write nothing to drift_reports")
    drift.set_defaults(func=cmd_drift)

    expl = add("explain", help="why an image is good or a defect: regions, nearest patches",
               description="Why one image is good or a defect under the project's model and "
                           "threshold in force: verdict, confidence, regions with their "
                           "nearest training patches. Reads no key of default_config.yaml: "
                           "its threshold is the project's active one and its regions use "
                           "the engine's fixed rules.")
    expl.add_argument("name")
    expl.add_argument("image", metavar="IMAGE", help="image file")
    expl.add_argument("--html", metavar="FILE", help="also write the self-contained HTML report")
    expl.add_argument("--k", type=int, default=3, help="nearest normal patches per region")
    expl.set_defaults(func=cmd_explain)

    def stress_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = add(name, help=help_text)
        cmd.add_argument("name")
        cmd.add_argument("--model-id", type=int, default=None, metavar="N",
                         help="model id to test (default: the model in use)")
        cmd.add_argument("--max-images", type=int, default=8, metavar="N",
                         help="held-out good images to use at most (a seeded sample beyond)")
        cmd.add_argument("--seed", type=int, default=0, help="which sample, shapes and draws")
        cmd.add_argument("--background", action="store_true", help=BACKGROUND_HELP)
        return cmd

    det = stress_command("detectability", "the smallest painted defect the model catches, "
                                          "by area and contrast")
    det.add_argument("--areas", type=_floats, metavar="PCT,PCT",
                     help="defect areas in %% of the image (default 0.1,0.25,0.5,1,2,5)")
    det.add_argument("--contrasts", type=_floats, metavar="C,C",
                     help="defect contrasts in (0, 1] (default 0.25,0.5,1)")
    det.set_defaults(func=cmd_detectability)
    rob = stress_command("robustness", "what light, blur and noise do to good parts' scores")
    rob.add_argument("--strengths", type=_floats, metavar="S,S",
                     help="strengths in (0, 1] (default 0.25,0.5,0.75,1)")
    rob.add_argument("--transforms", type=lambda t: [x.strip() for x in t.split(",")],
                     metavar="NAME,NAME", help="changes to apply (default all: "
                     "brighter, darker, gamma, uneven_light, shadow, blur, motion_blur, "
                     "defocus, noise, sensor_noise, jpeg)")
    rob.set_defaults(func=cmd_robustness)

    exp = add("export", help="export a model as ONNX or OpenVINO, checked against the app")
    exp.add_argument("name")
    exp.add_argument("--format", required=True, choices=["openvino", "onnx"])
    exp.add_argument("--fp16", action="store_true",
                     help="OpenVINO weights and bank in half precision (refused if the check "
                          "fails)")
    exp.add_argument("--model", type=int, default=None, metavar="N",
                     help="Model N as the pages number them (default: the model in use)")
    exp.add_argument("--background", action="store_true", help=BACKGROUND_HELP)
    exp.set_defaults(func=cmd_export)

    rev = add("review", help="confirm or overrule the verdict on one image of a lot")
    rev.add_argument("name")
    rev.add_argument("--batch", required=True, help="the lot (batch) name")
    rev.add_argument("--image", required=True, metavar="SHA256", help="the image's sha256")
    rev.add_argument("--verdict", required=True, choices=["good", "defect", "clear"])
    rev.add_argument("--by", required=True, metavar="WHO", help="who reviewed it")
    rev.set_defaults(func=cmd_review)

    back = add("rollback", help="make an earlier bank version active again (as a new version)")
    back.add_argument("name")
    back.add_argument("--to", type=int, required=True, metavar="VERSION")
    back.add_argument("--note")
    back.set_defaults(func=cmd_rollback)

    threshold = sub.add_parser("threshold", help="set the decision threshold")
    tsub = threshold.add_subparsers(dest="action", required=True)
    tset = add("set", tsub, help="new active threshold (raw score); the old one is kept")
    tset.add_argument("name")
    tset.add_argument("value", type=float)
    tset.add_argument("--by", default="cli", help="who set it (kept in history)")
    tset.add_argument("--confirm", action="store_true",
                      help="accept a value outside the sane range of the validation scores")
    tset.set_defaults(func=cmd_threshold_set)

    upd = add("update-bank", help="add new good images to the active memory bank")
    upd.add_argument("name")
    upd.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    upd.add_argument("--note")
    upd.add_argument("--force-suspect", action="store_true",
                     help="also add images the current model scores as defects (a person "
                          "checked they are good; recorded in the version's note)")
    upd.add_argument("--background", action="store_true", help=BACKGROUND_HELP)
    upd.set_defaults(func=cmd_update_bank)

    jobs = sub.add_parser("jobs", help="long work (train, import, score, bank update) as jobs")
    jsub = jobs.add_subparsers(dest="action", required=True)
    jlist = add("list", jsub, help="jobs newest first, with stage, progress and errors")
    jlist.add_argument("name", nargs="?", help="only this project's jobs")
    jlist.add_argument("--active", action="store_true", help="only queued or running jobs")
    jlist.add_argument("--limit", type=int, default=50)
    jlist.set_defaults(func=cmd_jobs_list)
    jcancel = add("cancel", jsub, help="cancel a queued job, or stop a running one")
    jcancel.add_argument("id", type=int)
    jcancel.set_defaults(func=cmd_jobs_cancel)
    jself = add("selftest", jsub, help="check that a worker takes jobs and shares KENSA_HOME")
    jself.add_argument("--seconds", type=float, default=0.5, help="how long the job works")
    jself.add_argument("--timeout", type=float, default=120.0, help="how long to wait")
    jself.set_defaults(func=cmd_jobs_selftest)

    adv = add("advanced-train", help="file training with a full config: model, params, "
                                     "augmentation copies, threshold rule",
              description="Train a dataset folder with default_config.yaml merged with "
                          "--config FILE, and write a run folder that `score --run` reads "
                          "(run.json, the model's files, threshold.json, config.yaml). Every "
                          "bad key of the config is listed, one line each (exit status 2).")
    adv.add_argument("--config", metavar="FILE",
                     help="YAML with the keys to change (default: default_config.yaml only)")
    adv.add_argument("--data", metavar="DIR", help="dataset folder (overrides data.path)")
    adv.add_argument("--out", metavar="DIR",
                     help="run folder to write (default: runs/<data folder name>)")
    adv.set_defaults(func=cmd_advanced_train)

    multi = add("multi-task-train", help="several file trainings from a tasks file, one "
                                         "summary table",
                description="Train every task of a tasks file (tasks: a list of {name, data, "
                            "and any default_config.yaml section to override}; optional "
                            "defaults: shared overrides) one after another in this process, "
                            "each into OUT/<name>. The whole file is checked first; a task "
                            "that fails at run time is reported and the others still run "
                            "(exit status 1 if any failed).")
    multi.add_argument("--config", metavar="TASKS.yaml", required=True, help="the tasks file")
    multi.add_argument("--out", metavar="DIR", help="parent of the run folders (default: runs)")
    multi.set_defaults(func=cmd_multi_task_train)

    tall = add("train-all", help="queue a training job for every project (or every task of "
                                 "a tasks file)",
               description="Queue one training job per project in the database, or per task "
                           "of --tasks (a task names a project; with data: DIR the folder is "
                           "imported into that project first, created if new), through the "
                           "Training page's services. Prints the job ids; --wait follows "
                           "them. Reads model, data.shots, data.seed and augmentation.preset "
                           "of the config; refuses inline augmentation transforms and a "
                           "threshold method other than auto.")
    tall.add_argument("--tasks", metavar="TASKS.yaml", help="train these tasks, not every project")
    tall.add_argument("--config", metavar="FILE",
                      help="config merged over default_config.yaml for every project")
    tall.add_argument("--shots", type=int, default=None, help="good images to train on "
                      "(overrides data.shots)")
    tall.add_argument("--seed", type=int, default=None, help="which shots (overrides data.seed)")
    tall.add_argument("--model", metavar="NAME", default=None,
                      help="registry model to train (overrides model.name; its own defaults)")
    tall.add_argument("--wait", action="store_true",
                      help="wait for the jobs with a progress bar; exit 1 if one fails")
    tall.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                      help="with --wait: give up waiting after this long (0: never)")
    tall.set_defaults(func=cmd_train_all)

    ada = add("adaptive-inference", help="score a folder as a lot, then learn its confidently "
                                         "normal images as new bank versions",
              description="Score the images of --images in order as one lot with the "
                          "project's model in use; online adaptation (engine.adapt) then "
                          "picks the images scored confidently normal (good and below the "
                          "review band) in chunks of 8, at most 32 per lot; each chunk "
                          "becomes a new bank version of kind online with its own threshold "
                          "row (shown in `history`, undone with `rollback`). Nothing is "
                          "learned from images in the review band, defects, or images a "
                          "person reviewed as defect.")
    ada.add_argument("--project", required=True, metavar="NAME")
    ada.add_argument("--images", required=True, metavar="DIR", help="image file or folder")
    ada.add_argument("--lot", metavar="NAME",
                     help="lot (batch) name (default: 'adaptive <date time>'); an existing lot "
                          "is continued, known images skipped")
    ada.add_argument("--dry-run", action="store_true",
                     help="score and say what would be learned; make no bank version")
    ada.set_defaults(func=cmd_adaptive_inference)

    work = add("worker", help="run a job worker here (same as python -m services.jobs.worker)")
    work.add_argument("--workers", type=int, default=1, help="jobs at once in this process")
    work.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                      help="exit after this long without work (0: never)")
    work.set_defaults(func=cmd_worker)
    return parser


def error_line(exc: BaseException) -> str:
    """One plain line for any failure: no class names, no traceback (``KENSA_DEBUG=1`` shows
    it). Out of memory and OS errors get words of their own: their texts are often empty or
    carry ``[Errno 28]`` noise."""
    if isinstance(exc, MemoryError):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return ("out of memory" + (f" ({detail})" if detail else "")
                + "; try fewer or smaller images, or a machine with more memory")
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return exc.strerror + (f": {' -> '.join(names)}" if names else "")
    if isinstance(exc, SQLAlchemyError):
        original = getattr(exc, "orig", None)
        text = str(original if original is not None else exc).strip()
        return "database error: " + (text.splitlines()[0] if text else "see KENSA_DEBUG=1")
    text = str(exc).strip()
    if text:
        return text.splitlines()[0].strip()
    return "unexpected internal error; run again with KENSA_DEBUG=1 to see where"


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is ``error: <one line>`` on stderr and exit status 2
    (130 when interrupted), so scripts can rely on the contract whatever went wrong."""
    args = build_parser().parse_args(argv)
    # A failed job's traceback is for worker logs; here the error is one line (below).
    logging.getLogger("kensa.jobs").addHandler(logging.NullHandler())
    args.params = dict(getattr(args, "param_items", []) or [])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _debug_traceback()
        print("error: interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:  # every problem of a config, one line each
        _debug_traceback()
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except Exception as exc:  # the contract holds for every failure (MemoryError included)
        _debug_traceback()
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2


def _debug_traceback() -> None:
    if os.environ.get("KENSA_DEBUG", "").strip() not in ("", "0"):
        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    from engine.device import configure_worker_process

    configure_worker_process()  # a CLI process trains and scores like a worker (engine.device)
    raise SystemExit(main())

"""Compare models on the project's own held-out images, as a job (kind ``compare_models``).

The decision table (:func:`engine.models.recommend.prior`) only orders the candidates; this
module measures them and lets the measurement decide (:func:`engine.models.recommend.pick`).

Every candidate is fitted on the SAME shots a training with that ``shots`` and ``seed`` would
use (:func:`services.training.fit.split_records`) and scores the same held-out images: the
defect images (with their masks) and the good images kept aside. Without a held-out defect,
the synthetic defects the threshold step paints (``fit.synthetic_plan``, seeded, so the same
pixels for every candidate) stand in, and the pick's reason says so. Measured per candidate:
image AUROC, pixel AUROC (when masks exist), F1 at the F1-optimal threshold, fit seconds,
milliseconds per image (scoring only) and peak memory.

Each candidate runs in a fresh ``python -m services.training.compare`` process:

* its peak memory is its own: the child reads its ``VmHWM`` (the high-water mark of its own
  address space, fresh after ``exec``). ``ru_maxrss`` is not used: Linux carries the parent's
  high-water mark across ``exec``, so a child of a 2 GB worker would report at least 2 GB;
* one crash (a segfault, the kernel's out-of-memory killer, a library that exits) is one
  failed row, never a failed job;
* Cancel kills the child at once instead of waiting for its epoch to end.

Nothing is written to ``model_versions``: a comparison creates no model. Its result is the
job's result JSON (like the stress test's); :func:`comparison_result` reads the newest back.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import db.repositories as repo
from engine.data import DatasetIndex, ImageRecord
from engine.models import ImageSource, ProgressFn, registry
from engine.models.recommend import Measured, pick, prior
from services.context import Kensa
from services.data.projects import project_index, require_project
from services.training.fit import (
    TrainingInputError,
    _load_all,
    _Scorer,
    colour_evidence,
    load_held_out,
    split_records,
    synthetic_plan,
    training_shortfall,
    validation_pixel_metrics,
)

log = logging.getLogger("kensa.compare")

KIND = "compare_models"
#: The repository root: the child runs ``python -m services.training.compare`` from here.
ROOT = Path(__file__).resolve().parents[2]
#: Lines of a child's stderr kept for the log when it fails.
STDERR_TAIL = 40
#: Seconds between two progress reports while a child is silent (keeps Cancel responsive).
POLL_S = 0.5
#: Shares of a candidate's progress bar: building and loading, fitting, scoring.
LOADED_AT, FITTED_AT = 0.1, 0.7

CancelFn = Callable[[], bool]


class ComparisonCancelled(RuntimeError):
    """The user pressed Cancel; the running candidate's process was stopped."""


# --------------------------------------------------------------------------- candidates


def default_candidates(include_network: bool = False) -> list[str]:
    """The registered models a comparison runs when none are named: the offline ones (all of
    them with ``include_network``), the default first; models that take tens of minutes
    without a GPU (DRAEM: about 40 on 2 cores at 16 shots) only when named."""
    return [s.name for s in registry.available()
            if (include_network or not s.needs_network) and not s.slow_without_gpu]


def _offline() -> bool:
    """Whether the model hub cannot be reached (a quick probe; only asked when a candidate
    needs the network, so an offline machine is told at once, not after a download fails)."""
    from engine.backbones import hub_reachable

    return not hub_reachable()


def check_candidates(candidates: Sequence[str] | None, include_network: bool = False,
                     params: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The candidates to run, in the order given, or a ValueError in one sentence saying
    what cannot run (an unknown name, a network model on an offline machine, a bad
    parameter); checked at request time, not minutes later in a worker."""
    names = list(dict.fromkeys(default_candidates(include_network) if candidates is None
                               else candidates))
    if not names:
        raise ValueError("Choose at least one model to compare.")
    specs = [registry.spec(n) for n in names]  # "unknown model 'x'; known: ..."
    online = [s for s in specs if s.needs_network]
    if online and _offline():
        listed = ", ".join(s.title for s in online)
        raise ValueError(f"{listed} need{'s' if len(online) == 1 else ''} network access and "
                         "this machine is offline: leave "
                         f"{'it' if len(online) == 1 else 'them'} out of the comparison.")
    for model, values in (params or {}).items():
        if model not in names:
            raise ValueError(f"parameters for {model}, which is not among the candidates")
        registry.validate(model, dict(values))
    return names


def _image_counts(session: Any, project_id: int) -> tuple[int, int, int]:
    """(good images training may learn from, other good images, defect images)."""
    counts = repo.image_counts(session, project_id)
    n_good = sum(n for (split, label, _), n in counts.items()
                 if split == "train" and label == "good")
    n_good_all = sum(n for (_, label, _), n in counts.items() if label == "good")
    n_defect = sum(n for (_, label, _), n in counts.items() if label == "defect")
    return n_good, n_good_all - n_good, n_defect


def request_comparison(ctx: Kensa, project: str, *, candidates: Sequence[str] | None = None,
                       shots: int | None = None, seed: int = 0,
                       params: Mapping[str, Mapping[str, Any]] | None = None,
                       include_network: bool = False) -> int:
    """Queue a comparison of ``candidates`` (default: every offline registered model) on the
    project's held-out images; returns the job id at once.

    ``shots``/``seed`` choose the same split a training with them would (None: "all", with
    the few images the threshold needs kept aside). ``params``: per-model overrides of the
    registry defaults (``{"kensa_patchcore": {"image_size": 256}}``); unnamed models run with
    their defaults, which is what the comparison measures. Refused at once, in one sentence:
    an unknown or network-only model offline, too few images, a comparison already running.
    """
    names = check_candidates(candidates, include_network, params)
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        problem = training_shortfall(*_image_counts(s, proj.id), shots)
    if problem:
        raise TrainingInputError(problem)
    running = comparison_job(ctx, project)
    if running is not None and running["status"] in ("queued", "running"):
        raise ValueError("A comparison is already running for this project: wait for it or "
                         "cancel it.")
    from services.jobs.api import submit

    payload = {"name": project, "candidates": names, "shots": shots, "seed": int(seed),
               "params": {k: dict(v) for k, v in (params or {}).items()}}
    return submit(ctx, KIND, payload)


# --------------------------------------------------------------------------- the plan


def make_plan(index: DatasetIndex, shots: int | None, seed: int,
              expected: Mapping[str, str] | None = None,
              limit: tuple[int, int] | None = None) -> dict[str, Any]:
    """What every candidate's process fits on and scores, as JSON: the training split of
    :func:`split_records` (the same as a training's), the held-out images with their masks,
    and whether synthetic defects stand in for missing held-out defects.

    ``expected`` (path -> sha256 recorded at import) makes the children refuse files changed
    since. ``limit=(goods, defects)`` keeps a seeded sample of the held-out images (benches on
    large folders); a project comparison scores what a training would (at most
    ``fit.MAX_VALIDATION``).
    """
    train, held_out = split_records(index, shots, seed)
    if limit is not None:
        rng = np.random.default_rng(seed)
        kept: list[ImageRecord] = []
        for label, n in zip(("good", "defect"), limit, strict=True):
            group = [r for r in held_out if r.label == label]
            if len(group) > n:
                group = [group[i] for i in sorted(rng.choice(len(group), n, replace=False))]
            kept += group
        held_out = sorted(kept, key=lambda r: str(r.path))

    def record(r: ImageRecord) -> dict[str, Any]:
        return {"path": str(r.path), "split": r.split, "label": r.label,
                "defect_type": r.defect_type,
                "mask": str(r.mask_path) if r.mask_path else None}

    return {
        "seed": int(seed), "shots": shots,
        "train": [record(r) for r in train], "held_out": [record(r) for r in held_out],
        "synthetic": not any(r.label == "defect" for r in held_out),
        "expected": {k: v for k, v in (expected or {}).items()
                     if k in {str(r.path) for r in [*train, *held_out]}},
    }


def _records(items: Sequence[Mapping[str, Any]]) -> list[ImageRecord]:
    return [ImageRecord(Path(i["path"]), i["split"], i["label"], i.get("defect_type"),
                        Path(i["mask"]) if i.get("mask") else None) for i in items]


# --------------------------------------------------------------------------- one candidate


class _Timed:
    """The model with its ``score`` calls timed: ms per image counts scoring only (not
    reading, painting or metrics)."""

    def __init__(self, model: Any) -> None:
        self.model, self.seconds, self.images = model, 0.0, 0

    def score(self, images: Sequence[np.ndarray]) -> Any:
        started = time.perf_counter()
        out = self.model.score(images)
        self.seconds += time.perf_counter() - started
        self.images += len(images)
        return out


def peak_memory_mb() -> float:
    """Peak resident memory of THIS process's own address space, in MB: ``VmHWM`` (reset by
    ``exec``, unlike ``ru_maxrss``, which inherits the parent's peak); ``ru_maxrss`` only
    where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def measure(plan: Mapping[str, Any], model_name: str, params: Mapping[str, Any],
            emit: ProgressFn) -> dict[str, Any]:
    """Fit ``model_name`` on the plan's shots and score its held-out images (in the child).

    One untimed warm-up scoring comes first (lazy initialisation is not what an inspection
    line pays per image). Returns the row; errors propagate (the caller turns them into an
    error row).
    """
    import torch  # noqa: F401 - imported before the baseline is read: every model pays it

    from engine.metrics import image_metrics

    base_mb = peak_memory_mb()  # the interpreter, torch and Kensa: not the model's doing
    params = dict(params)
    seed = int(plan.get("seed", 0))
    if "seed" in registry.spec(model_name).default_config:
        params.setdefault("seed", seed)
    expected = plan.get("expected") or None
    skipped: list[str] = []
    emit("building the model", 0.0)
    started = time.perf_counter()
    model = registry.create(model_name, **params)
    build_s = time.perf_counter() - started
    emit("loading images", LOADED_AT / 2)
    train = _load_all(_records(plan["train"]), skipped, shots=True, expected=expected)
    if not train:
        raise TrainingInputError("none of the training images could be read and used"
                                 + (f" ({skipped[0]})" if skipped else ""))
    images = [image for _, image, _ in train]
    sources = [ImageSource(str(r.path), digest) for r, _, digest in train]

    def fit_progress(stage: str, fraction: float) -> None:
        if stage != "done":
            emit(stage, LOADED_AT + (FITTED_AT - LOADED_AT) * min(1.0, max(0.0, fraction)))

    held_out = _records(plan["held_out"])
    goods = [r for r in held_out if r.label == "good"]
    evidence = colour_evidence(model, goods, expected)  # as the training itself does
    started = time.perf_counter()
    model.fit(images, progress=fit_progress, sources=sources, **evidence)
    fit_s = time.perf_counter() - started
    del images, evidence
    chosen, per_image = synthetic_plan(len(goods)) if plan.get("synthetic") else ([], 0)
    painted = {goods[i].path: j * per_image for j, i in enumerate(chosen)}
    timed = _Timed(model)
    scorer = _Scorer(timed)  # type: ignore[arg-type]  # only .score is used
    warmed = False
    for i, record in enumerate(held_out):
        emit("scoring held-out images",
             FITTED_AT + (1 - FITTED_AT) * i / max(1, len(held_out)))
        loaded = load_held_out(record, expected, skipped)
        if loaded is None:
            continue
        image, mask = loaded
        if not warmed:
            model.score([image])
            warmed = True
        scorer.add(str(record.path), image, int(record.label == "defect"), mask)
        if record.path in painted:
            scorer.paint(str(record.path), image, seed, per_image, painted[record.path])
    validation = scorer.validation()
    labels = validation.labels
    if not (labels.size and labels.min() == 0 and labels.max() == 1):
        raise TrainingInputError("the held-out images lack good or defect images to measure "
                                 "on (synthetic defects could not be painted: flat images?)")
    scores = image_metrics(validation.scores, labels)
    pixel = validation_pixel_metrics(validation)
    emit("done", 1.0)
    return {
        "model": model_name,
        "image_auroc": _round(scores["image_auroc"], 4),
        "pixel_auroc": _round(pixel.get("pixel_auroc"), 4),
        "f1": _round(scores["image_f1"], 4),
        "fit_s": round(fit_s, 2),
        "build_s": round(build_s, 2),
        "ms_per_image": round(1000 * timed.seconds / max(1, timed.images), 1),
        "peak_rss_mb": round(peak_memory_mb(), 1),
        "base_rss_mb": round(base_mb, 1),
        "n_train": len(train),
        "n_scored": int(labels.size),
        "n_defect": int(labels.sum()),
        "n_synthetic": len(validation.synthetic),
        "skipped": skipped[:5],
        "error": None,
    }


def _one_line(exc: BaseException) -> str:
    """A child's error as one readable line (no class names, no traceback)."""
    if isinstance(exc, MemoryError):
        return "ran out of memory"
    text = str(exc).strip()
    return text.splitlines()[0].strip()[:300] if text else "failed without saying why"


def _signal_words(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"its process was killed by {name}{why}"
    return f"its process stopped with exit code {code}"


def worker_command(model: str) -> list[str]:
    """The child's command line (a module run, so it imports nothing of the parent's)."""
    return [sys.executable, "-m", "services.training.compare", "--worker"]


def error_row(model: str, error: str) -> dict[str, Any]:
    """The row of a candidate that could not be measured: its numbers None (never a made-up
    0, which would read as a measured failure to detect) and the reason in words."""
    return {"model": model, "image_auroc": None, "pixel_auroc": None, "f1": None,
            "fit_s": None, "ms_per_image": None, "peak_rss_mb": None, "error": error}


def run_candidate(plan: Mapping[str, Any], model: str, params: Mapping[str, Any] | None = None,
                  *, progress: ProgressFn | None = None, cancelled: CancelFn | None = None,
                  timeout_s: float | None = None) -> dict[str, Any]:
    """Measure one candidate in a fresh child process; returns its row (``error`` set, the
    numbers None, when it failed or crashed).

    ``progress(stage, fraction)`` gets the child's reports (the model's own, per epoch for
    trained models) and a repeat every :data:`POLL_S` while it is silent; it may raise to
    stop (a job's Cancel), as may ``cancelled()``: either way the child is killed first.
    """
    report = progress or (lambda stage, fraction: None)
    stop = cancelled or (lambda: False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory(prefix="kensa-compare-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"plan": plan, "model": model, "params": dict(params or {})}))
        err_path = Path(tmp) / "stderr.txt"
        with open(err_path, "w") as err, subprocess.Popen(
                [*worker_command(model), str(job)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                stderr=err, text=True, start_new_session=True) as proc:
            row = _follow(proc, report, stop, timeout_s)
        code = proc.returncode
        if row is None:
            tail = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
            log.warning("comparison candidate %s stopped (code %s):\n%s", model, code,
                        "\n".join(tail[-STDERR_TAIL:]))
            why = _signal_words(code) if code else "its process ended without a result"
            if code and code > 0 and tail:
                why += f": {tail[-1].strip()[:300]}"
            row = error_row(model, why)
    return {**row, "model": model}


def _kill(proc: subprocess.Popen[str]) -> None:
    """Kill the child and whatever it started (its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _follow(proc: subprocess.Popen[str], report: ProgressFn, stop: CancelFn,
            timeout_s: float | None) -> dict[str, Any] | None:
    """Relay the child's progress lines until it ends; its row, or None if it sent none.

    Whatever ends the wait early (Cancel, the time limit, an error while reporting) kills
    the child first: no candidate outlives its comparison.
    """
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True, name="kensa-compare-read")
    reader.start()
    stage, fraction, row = "starting", 0.0, None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            try:
                line = lines.get(timeout=POLL_S)
            except queue.Empty:
                line = ""
            if stop():
                raise ComparisonCancelled(f"comparison cancelled while {stage}")
            if deadline is not None and time.monotonic() > deadline:
                return error_row("?", f"took longer than {timeout_s:.0f} s and was stopped")
            if line is None:
                break
            try:
                message = json.loads(line) if line.strip() else {}
            except ValueError:
                message = {}
            if "row" in message:
                row = message["row"]
            elif "stage" in message:
                stage, fraction = str(message["stage"]), float(message["fraction"])
            report(stage, fraction)
        proc.wait()
        return row
    finally:
        if proc.poll() is None:
            _kill(proc)
        reader.join(timeout=5)


def _child(job_path: str) -> int:
    """The child's body: measure one candidate, write progress and the row as JSON lines.

    The protocol goes to a private copy of stdout; the real stdout is pointed at stderr so
    that whatever a library prints (progress bars, warnings) cannot break a line.
    """
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = json.loads(Path(job_path).read_text())

    def emit(stage: str, fraction: float) -> None:
        out.write(json.dumps({"stage": stage, "fraction": round(float(fraction), 4)}) + "\n")

    try:
        row = measure(job["plan"], job["model"], job.get("params") or {}, emit)
    except Exception as exc:  # noqa: BLE001 - any failure is this candidate's row
        import traceback

        traceback.print_exc()
        row = error_row(job["model"], _one_line(exc))
    out.write(json.dumps({"row": row}) + "\n")
    out.flush()
    return 0


# --------------------------------------------------------------------------- the comparison


def compare(plan: Mapping[str, Any], candidates: Sequence[str], *, n_good: int,
            params: Mapping[str, Mapping[str, Any]] | None = None,
            progress: ProgressFn | None = None, cancelled: CancelFn | None = None,
            timeout_s: float | None = None) -> dict[str, Any]:
    """Run the candidates one after the other (the table's order) on ``plan`` and pick.

    Shared by the job (:func:`run_comparison`) and ``bench/zoo.py``. ``n_good``: the good
    images the project has to learn from (what the table's "few images" rule reads).
    """
    report = progress or (lambda stage, fraction: None)
    n_defect = sum(1 for r in plan["held_out"] if r["label"] == "defect")
    ranked = prior(n_good, n_defect, models=list(candidates))
    titles = {n: registry.spec(n).title for n in candidates}
    rows: list[dict[str, Any]] = []
    for i, (model, _) in enumerate(ranked):
        head = f"{titles[model]} ({i + 1} of {len(ranked)})"

        def step(stage: str, fraction: float, i: int = i, head: str = head) -> None:
            report(f"{head}: {stage}", (i + min(1.0, max(0.0, fraction))) / len(ranked))

        step("starting", 0.0)
        row = run_candidate(plan, model, (params or {}).get(model), progress=step,
                            cancelled=cancelled, timeout_s=timeout_s)
        rows.append({**row, "model": model, "title": titles[model]})
    measured = [Measured(r["model"], r["title"], r["image_auroc"], r["ms_per_image"],
                         r["error"]) for r in rows]
    chosen, reason = pick(measured, [m for m, _ in ranked], bool(plan.get("synthetic")),
                          ranked[0][0] if ranked else None)
    report("done", 1.0)
    return {
        "shots": plan.get("shots"), "seed": plan.get("seed"),
        "n_train": len(plan["train"]),
        "n_held_out": {"good": len(plan["held_out"]) - n_defect, "defect": n_defect},
        "synthetic": bool(plan.get("synthetic")),
        "prior": [{"model": m, "title": titles[m], "reason": why} for m, why in ranked],
        "rows": rows, "pick": chosen, "pick_title": titles.get(chosen or ""),
        "reason": reason, "params": {k: dict(v) for k, v in (params or {}).items()},
    }


def run_comparison(ctx: Kensa, project: str, *, candidates: Sequence[str],
                   shots: int | None = None, seed: int = 0,
                   params: Mapping[str, Mapping[str, Any]] | None = None,
                   progress: ProgressFn | None = None,
                   cancelled: CancelFn | None = None) -> dict[str, Any]:
    """The job's work: the project's split, every candidate measured, the pick and why."""
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        index = project_index(s, proj)
        expected = {img.path: img.sha256 for img in repo.list_images(s, proj.id)}
    plan = make_plan(index, shots, seed, expected)
    result = compare(plan, candidates, n_good=len(plan["train"]), params=params,
                     progress=progress, cancelled=cancelled)
    return {"project": project, **result}


# --------------------------------------------------------------------------- reading back


def _jobs(ctx: Kensa, project: str) -> list[dict[str, Any]]:
    from services.jobs.api import list_jobs

    return list_jobs(ctx, project, kinds=[KIND], limit=20)


def comparison_job(ctx: Kensa, project: str) -> dict[str, Any] | None:
    """The newest comparison job of the project, whatever its status (the page's progress)."""
    jobs = _jobs(ctx, project)
    return jobs[0] if jobs else None


def comparison_result(ctx: Kensa, project: str) -> dict[str, Any] | None:
    """The newest finished comparison of the project (its job result), else None."""
    for job in _jobs(ctx, project):
        if job["status"] == "done" and job["result"]:
            return {**job["result"], "job_id": job["id"], "finished_at": job["finished_at"]}
    return None


def _num(value: Any, digits: int) -> str:
    """A number for the table, or "—" when the model has none (no made-up 0)."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"


def comparison_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per candidate as the page's table shows it (the pick first, numbers
    formatted, "—" where a model has no value, e.g. pixel AUROC without masks)."""
    rows = sorted(result["rows"], key=lambda r: r["model"] != result.get("pick"))
    return [{
        "model": r.get("title") or r["model"],
        "pick": "★ pick" if r["model"] == result.get("pick") else "",
        "image AUROC": _num(r.get("image_auroc"), 3),
        "pixel AUROC": _num(r.get("pixel_auroc"), 3),
        "F1": _num(r.get("f1"), 3),
        "fit (s)": _num(r.get("fit_s"), 1),
        "ms per image": _num(r.get("ms_per_image"), 0),
        "peak memory (MB)": _num(r.get("peak_rss_mb"), 0),
        "note": (r.get("error") or "")[:200],
    } for r in rows]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child process (``--worker JOB.json``); nothing else is offered
    here, so a person who runs the module by hand is told where comparisons live."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--worker":
        return _child(args[1])
    print("usage: python -m services.training.compare --worker JOB.json (a comparison's own "
          "child process; run comparisons through the Training page or bench/zoo.py)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Stress test of a trained model: the smallest defect it catches, and what lighting, blur and
noise do to the scores of good parts (the measuring is :mod:`engine.augment.stress`).

It runs as a job (kind ``stress_test``): a few hundred scorings of held-out good images take
tens of seconds to minutes, far too long for a page's script thread. The job's result IS the
report (no table of its own): :func:`latest_stress` reads the newest finished one back.

Images: the held-out GOOD images of the run (its validation batch joined to the project's
images labelled good; the model never learned from them), shrunk to the model's input size
before defects are painted or light is changed, so a "1 % defect" or a "2 px blur" is one on
the picture the model actually sees, and painting costs no more than it must.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import db.repositories as repo
from db.models import ModelVersion, Project, RunStatus
from engine.augment.stress import (
    AUGMENTATION_TWIN,
    DEFAULT_AREAS,
    DEFAULT_CONTRASTS,
    DEFAULT_STRENGTHS,
    LADDERS,
    detectability,
    pushes_over,
    robustness,
    smallest_caught,
)
from engine.data import ImageLoadError, load_image
from engine.imaging import shrink_to_fit
from engine.models import registry
from services.context import Kensa
from services.data.projects import active_model_version, require_project
from services.inference.batches import (
    ActiveModel,
    active_state_of,
    load_model,
    validation_batch_name,
)
from services.wording import model_name, model_numbers

KIND = "stress_test"
PARTS = ("detectability", "robustness")
#: Good images a stress test uses at most (a seeded sample beyond): every level scores each.
DEFAULT_MAX_IMAGES = 8
#: A defect size counts as caught when at least this share of the images flag it.
CATCH_RATE = 0.9
#: Images per ``model.score`` call: bounds memory at large input sizes.
SCORE_CHUNK = 8
#: Job payload keys passed through to :func:`run_stress` (everything else is refused).
OPTIONS = ("max_images", "seed", "parts", "areas", "contrasts", "strengths", "transforms",
           "kind")

ProgressFn = Callable[[str, float], None]
#: Legend headings of the robustness chart, per change group.
GROUP_TITLES = {"light": "Light", "blur": "Sharpness", "noise": "Noise and compression"}


class StressCancelled(RuntimeError):
    """The stress test was cancelled between two levels."""


# --------------------------------------------------------------------------- which model


def _model_version(session: Any, project: Project, model_version_id: int | None) -> ModelVersion:
    """The finished model version ``model_version_id`` of ``project`` (None: the one in use)."""
    if model_version_id is None:
        mv = active_model_version(session, project.id)
        if mv is None:
            raise LookupError(f"project {project.name!r} has no trained model yet; train one "
                              "first")
        return mv
    mv = repo.get_model_version(session, int(model_version_id))
    if mv is None or mv.project_id != project.id or mv.status != RunStatus.DONE.value:
        raise LookupError(f"model id {model_version_id} is not a finished training of "
                          f"{project.name!r}")
    return mv


def _active_state(ctx: Kensa, session: Any, mv: ModelVersion) -> ActiveModel:
    """The model version's active state and threshold, as scoring would use them."""
    active = active_state_of(ctx, session, mv)
    if active is None:
        raise LookupError(f"model id {mv.id} has no active state to test")
    return active


def _input_side(mv: ModelVersion) -> int | None:
    """The long side the model scores at (its ``image_size``), None if the model has none."""
    try:
        defaults = dict(registry.spec(mv.algorithm).default_config)
    except ValueError:
        defaults = {}
    side = {**defaults, **((mv.params or {}).get("model") or {})}.get("image_size")
    return int(side) if isinstance(side, int | float) else None


def _goods_of(ctx: Kensa, session: Any, project: Project, mv: ModelVersion) -> list[str]:
    batch = repo.get_batch_by_name(session, project.id, validation_batch_name(mv.id))
    if batch is None:
        return []
    good = {img.sha256: img for img in repo.list_images(session, project.id, label="good")}
    paths = {str(ctx.resolve(good[p.image_sha256].path))
             for p in repo.list_predictions(session, batch.id) if p.image_sha256 in good}
    return sorted(paths)


def held_out_goods(ctx: Kensa, project: str, model_version_id: int | None, *,
                   max_images: int | None = None, seed: int = 0) -> list[str]:
    """Paths of the run's held-out good images (sorted); beyond ``max_images`` a seeded sample.

    Raises a plain error when there is none: without good images the model never saw, a
    stress test would measure memory, not the model.
    """
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        mv = _model_version(s, proj, model_version_id)
        paths = _goods_of(ctx, s, proj, mv)
        label = model_name(model_numbers(s, proj.id).get(mv.id))
    if not paths:
        raise ValueError(f"the stress test needs held-out good images, and {label} has none: "
                         "add a few good test images and train again")
    if max_images is not None and len(paths) > max_images:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        picked = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
        paths = [paths[i] for i in sorted(picked)]
    return paths


# --------------------------------------------------------------------------- running


def run_stress(
    ctx: Kensa,
    project: str,
    model_version_id: int | None = None,
    *,
    max_images: int = DEFAULT_MAX_IMAGES,
    seed: int = 0,
    parts: Sequence[str] = PARTS,
    areas: Sequence[float] = DEFAULT_AREAS,
    contrasts: Sequence[float] = DEFAULT_CONTRASTS,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    transforms: Sequence[str] | None = None,
    kind: str = "perlin",
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Load the model version's active state and threshold and run the parts asked for.

    Returns ``{"model_version_id", "model_label", "threshold", "n_images", "image_side",
    "images", "skipped", "seed", "detectability": {"rows", "smallest", "kind", "rate"} | None,
    "robustness": {"rows", "pushes_over"} | None}`` (a part not asked for is None).
    ``progress(stage, fraction)`` may raise to stop (a job's Cancel); ``cancelled()`` is
    checked at the same points and raises :class:`StressCancelled`.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be among {', '.join(PARTS)}, got {list(parts)}")
    transforms = list(LADDERS) if transforms is None else list(transforms)

    def report(stage: str, fraction: float) -> None:
        if cancelled is not None and cancelled():
            raise StressCancelled(f"stress test cancelled while {stage}")
        if progress is not None:
            progress(stage, min(1.0, max(0.0, fraction)))

    report("loading the model", 0.0)
    paths = held_out_goods(ctx, project, model_version_id, max_images=max_images, seed=seed)
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        mv = _model_version(s, proj, model_version_id)
        active = _active_state(ctx, s, mv)
        label = model_name(model_numbers(s, proj.id).get(mv.id))
        side = _input_side(mv)
    model = load_model(active).model
    threshold = float(active.rule.value)

    goods, names, skipped = [], [], []
    for path in paths:
        try:
            image = load_image(path)
        except (ImageLoadError, OSError) as exc:
            skipped.append({"path": path, "problem": str(exc)})
            continue
        goods.append(shrink_to_fit(image, side) if side else image)
        names.append(Path(path).name)
    if not goods:
        raise ValueError(f"none of the {len(paths)} held-out good images of {label} can be "
                         f"read any more (first: {skipped[0]['problem']})")

    def score(images: Sequence[np.ndarray]) -> np.ndarray:
        out = [model.score(list(images[i:i + SCORE_CHUNK])).scores
               for i in range(0, len(images), SCORE_CHUNK)]
        return np.concatenate([np.asarray(o, dtype=np.float64) for o in out])

    # progress in proportion to the scorings each part makes
    det_levels = len(areas) * len(contrasts) if "detectability" in parts else 0
    rob_levels = len(transforms) * len(strengths) if "robustness" in parts else 0
    levels = 1 + det_levels + rob_levels
    start = 0.05

    def span(first: int, count: int) -> ProgressFn:
        def step(stage: str, fraction: float) -> None:
            report(stage, start + (1 - start) * (first + fraction * count) / levels)
        return step

    span(0, 1)("scoring the unchanged good images", 0.0)
    baseline = score(goods)
    result: dict[str, Any] = {
        "model_version_id": mv.id, "model_label": label, "threshold": threshold,
        "n_images": len(goods), "image_side": side, "images": names, "skipped": skipped,
        "seed": seed, "detectability": None, "robustness": None,
        "baseline": {"mean_score": float(baseline.mean()), "max_score": float(baseline.max())},
    }
    if det_levels and not (baseline < threshold).any():
        # nothing to catch on: every good image is already a false alarm (robustness still
        # says how much further light, blur and noise push them)
        result["detectability"] = {
            "rows": [], "kind": kind, "rate": CATCH_RATE, "smallest": [],
            "problem": f"All {len(goods)} held-out good images already score at or over the "
                       f"threshold {threshold:.4g}, so a painted defect cannot show whether it "
                       "is caught; lower the false alarms first (threshold, more good images)."}
    elif det_levels:
        rows = detectability(goods, score, threshold, areas=areas, contrasts=contrasts,
                             kind=kind, seed=seed, baseline=baseline,
                             progress=span(1, det_levels))
        result["detectability"] = {"rows": rows, "kind": kind, "rate": CATCH_RATE,
                                   "smallest": smallest_caught(rows, CATCH_RATE)}
    if rob_levels:
        rows = robustness(goods, score, threshold, strengths=strengths, transforms=transforms,
                          seed=seed, baseline=baseline, progress=span(1 + det_levels, rob_levels))
        pushed = pushes_over(rows)
        result["robustness"] = {"rows": rows, "pushes_over": pushed,
                                "switch_on": switch_on(pushed)}
    report("done", 1.0)
    return result


# --------------------------------------------------------------------------- jobs


def request_stress(ctx: Kensa, project: str, model_version_id: int | None = None,
                   **options: Any) -> int:
    """Queue a stress test of the model version (None: the one in use); returns the job id.

    What would fail in the worker (no such model, no held-out good image, an unknown option)
    is refused now, in one plain sentence.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown stress test option(s) {', '.join(unknown)}; known: "
                         f"{', '.join(OPTIONS)}")
    payload = stress_payload(ctx, project, model_version_id, **options)
    from services.jobs.api import submit

    return submit(ctx, KIND, payload)


def stress_payload(ctx: Kensa, project: str, model_version_id: int | None = None,
                   **options: Any) -> dict[str, Any]:
    """The job payload, with the model version resolved (a later training does not change
    which model a queued test measures) and its held-out good images checked."""
    with ctx.session(readonly=True) as s:
        mv_id = _model_version(s, require_project(s, project), model_version_id).id
    held_out_goods(ctx, project, mv_id)
    return {"name": project, "model_version_id": mv_id, **options}


def _jobs(ctx: Kensa, project: str, model_version_id: int) -> list[dict[str, Any]]:
    from services.jobs.api import list_jobs

    return [j for j in list_jobs(ctx, project, kinds=[KIND], limit=None)
            if (j["payload"] or {}).get("model_version_id") == model_version_id]


def latest_stress(ctx: Kensa, project: str, model_version_id: int,
                  parts: Sequence[str] = PARTS) -> dict[str, Any] | None:
    """The newest finished stress test of the model version that measured every part in
    ``parts`` (its job result), else None."""
    for job in _jobs(ctx, project, model_version_id):
        result = job["result"] or {}
        if job["status"] == "done" and all(result.get(p) for p in parts):
            return result
    return None


def stress_job(ctx: Kensa, project: str, model_version_id: int) -> dict[str, Any] | None:
    """The newest stress test job of the model version, whatever its status (page progress)."""
    jobs = _jobs(ctx, project, model_version_id)
    return jobs[0] if jobs else None


# --------------------------------------------------------------------------- words


def contrast_words(contrast: float) -> str:
    named = {1.0: "full contrast", 0.5: "half contrast", 0.25: "a quarter of full contrast"}
    return named.get(float(contrast), f"{contrast:.0%} of full contrast")


def area_words(area_pct: float) -> str:
    return f"{area_pct:.2g} % of the image"


def detectability_sentences(det: dict[str, Any]) -> list[str]:
    """One sentence per contrast, strongest first: how small a defect is still caught in at
    least the catch rate of the images (numbers from the rows)."""
    if det.get("problem"):
        return [det["problem"]]
    rows = det["rows"]
    out = []
    for s in det["smallest"]:
        words = contrast_words(s["contrast"])
        if s["area"] is not None:
            out.append(f"At {words} it catches defects down to {area_words(s['area'])} in "
                       f"{s['detected']} of {s['n']} images.")
            continue
        level = [r for r in rows if r["contrast"] == s["contrast"]]
        top = max(level, key=lambda r: r["area"])
        out.append(f"At {words} it does not reliably catch any tested size: even a defect "
                   f"of {area_words(top['area'])} is caught in only {top['detected']} of "
                   f"{top['n']} images.")
    return out


def switch_on(pushed: Sequence[dict[str, Any]]) -> list[str]:
    """Titles of the Augmentation page's transforms that teach the changes in ``pushed``, in
    the order of ``pushed`` (weakest strength first), each once."""
    from engine.augment.schema import TRANSFORMS  # albumentations, torch: worker side only

    names = [AUGMENTATION_TWIN[p["transform"]] for p in pushed
             if p["transform"] in AUGMENTATION_TWIN]
    return [TRANSFORMS[n].title for n in dict.fromkeys(names) if n in TRANSFORMS]


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def robustness_sentences(rob: dict[str, Any]) -> list[str]:
    """What pushes good parts over the threshold, one sentence per change (a list of ten
    changes in one sentence is unreadable), each saying what its strength means, then the hint
    which preset to train with; or which change comes closest when nothing does."""
    pushed = sorted(rob["pushes_over"], key=lambda p: (p["strength"], -p["pushed_over"]))
    if pushed:
        return [f"{p['title']} pushes good parts over the threshold from strength "
                f"{p['strength']:g} (strength 1: {_full_words(p['transform'])}): "
                f"{p['pushed_over']} of {p['n']} good images." for p in pushed] + [
                (f"Train with a preset that switches on {_and(rob['switch_on'])} "
                 if rob.get("switch_on") else "Train with a preset that includes these changes ")
                + "(Augmentation page), so the model learns that they are normal."]
    changed = [r for r in rob["rows"] if r["strength"] > 0 and r["margin"] is not None]
    if not changed:
        return ["A good image already scores over the threshold unchanged, so the room left "
                "under it cannot be measured."]
    worst = min(changed, key=lambda r: r["margin"])
    return ["None of the tested lighting, blur and noise changes pushes a good part over the "
            f"threshold. The closest is {worst['title'].lower()} at strength "
            f"{worst['strength']:g} (strength 1: {_full_words(worst['transform'])}): the "
            f"highest good score keeps {worst['margin']:.0%} of the room it had under the "
            "threshold."]


def _full_words(transform: str) -> str:
    """What strength 1 of a robustness change is, in words (a transform this version no longer
    offers: said so, rather than failing on an old stored result)."""
    ladder = LADDERS.get(transform)
    return ladder.full if ladder is not None else "not described in this version"


def detectability_lines(det: dict[str, Any]) -> list[dict[str, Any]]:
    """Chart lines: detection rate against area (%), one per contrast, strongest first."""
    lines = []
    for c in sorted({r["contrast"] for r in det["rows"]}, reverse=True):
        level = sorted((r for r in det["rows"] if r["contrast"] == c), key=lambda r: r["area"])
        lines.append({"name": contrast_words(c), "area": [r["area"] for r in level],
                      "rate": [r["detection_rate"] for r in level],
                      "text": [f"{r['detected']} of {r['n']}" for r in level]})
    return lines


def robustness_lines(rob: dict[str, Any]) -> list[dict[str, Any]]:
    """Chart lines: highest and mean good score against strength, one per transform."""
    lines = []
    for name in dict.fromkeys(r["transform"] for r in rob["rows"]):
        level = sorted((r for r in rob["rows"] if r["transform"] == name),
                       key=lambda r: r["strength"])
        lines.append({"name": level[0]["title"], "group": level[0]["group"],
                      "group_title": GROUP_TITLES.get(level[0]["group"], level[0]["group"]),
                      "strength": [r["strength"] for r in level],
                      "max": [r["max_score"] for r in level],
                      "mean": [r["mean_score"] for r in level]})
    return lines


def change_words() -> list[dict[str, str]]:
    """Every change the robustness test applies, with what strength 1 means (for a legend)."""
    return [{"change": ladder.title, "kind": ladder.group, "at strength 1": ladder.full}
            for ladder in LADDERS.values()]

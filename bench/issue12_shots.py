"""Acceptance screenshots of issue 12 (augmentation, synthetic defects, synthetic threshold,
stress test) on the real data sets, as a first-time user would open the pages.

1. Per data set (MVTec layout): a project in a fresh ``KENSA_HOME``, the default model trained
   at ``--shots`` good images (no augmentation), the stress test run as a ``stress_test`` job
   (the job path the CLI and the page's button use, so the page finds it), and its
   detectability and robustness summary printed. Screenshots of the Evaluation page:
   ``screenshots/issue12-stress-<data set>.png`` (whole page) and
   ``issue12-stress-<data set>-section.png`` (the stress section only).
2. A project of ONLY good images (``--good-only`` toothbrush ``train/good`` images copied into a
   flat ``good/`` folder), trained at ``--shots`` but at most its image count less 4, so its
   threshold is set on synthetic defects painted into the held-out goods →
   ``issue12-synthetic-threshold.png`` (the info box and the synthetic images among the worst
   cases); the threshold method and value are printed.
3. The Augmentation page of the first data set's project with a preset (brightness/contrast,
   sensor noise, a synthetic stain) saved through the service, marked for training, and loaded
   on the page through its "Saved settings" box → ``issue12-augmentation.png``.

Subset: a data set's test split is imported with at most ``--max-test`` images per folder
(sorted by name; their ground-truth masks with them) and all of ``train/good``, copied into
``HOME/data/<data set>``; training scores at most 300 held-out images anyway
(``services.training.fit.MAX_VALIDATION``), so only the import would grow with more. The
JSON says which subset was used.

    python bench/issue12_shots.py [--datasets toothbrush magnetic_tile] [--shots 16]
                                  [--max-test 60] [--good-only 20] [--home DIR] [--reuse]

``--reuse`` keeps projects, trainings and stress tests already in ``--home``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path("/work/shared/datasets")
PRESET = "light, noise and stains"
GOOD_ONLY = "toothbrush good only"
#: The preset of step 3: everyday light and camera changes plus a synthetic stain, all
#: applied to every image so the screenshot shows each of them.
PRESET_CONFIG = {"version": 1, "seed": 0, "transforms": [
    {"name": "RandomBrightnessContrast", "p": 1.0,
     "params": {"brightness_limit": [-0.2, 0.2], "contrast_limit": [-0.2, 0.2]}},
    {"name": "GaussNoise", "p": 1.0, "params": {"std_range": [0.02, 0.05],
                                               "per_channel": False}},
    {"name": "PerlinDefect", "p": 1.0, "params": {"area": [0.01, 0.04],
                                                 "contrast": [0.5, 0.9]}},
]}


# --------------------------------------------------------------------------- data


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copy2(src, dst)


def subset(dataset: Path, out: Path, max_test: int) -> dict[str, Any]:
    """``dataset`` (MVTec layout) with at most ``max_test`` test images per folder, copied."""
    kept: dict[str, int] = {}
    for good in sorted((dataset / "train" / "good").iterdir()):
        _copy(good, out / "train" / "good" / good.name)
    kept["train/good"] = len(list((dataset / "train" / "good").iterdir()))
    for folder in sorted(p for p in (dataset / "test").iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())[:max_test]
        for f in files:
            _copy(f, out / "test" / folder.name / f.name)
            masks = dataset / "ground_truth" / folder.name
            for mask in masks.glob(f"{f.stem}_mask.*") if masks.is_dir() else ():
                _copy(mask, out / "ground_truth" / folder.name / mask.name)
        kept[f"test/{folder.name}"] = len(files)
    return {"max_test_per_folder": max_test, "images": kept}


def _has_model(ctx: Any, name: str) -> bool:
    from services.inference.batches import get_active_model

    try:
        get_active_model(ctx, name)
    except LookupError:
        return False
    return True


def train(ctx: Any, name: str, data: Path, shots: int | None, reuse: bool) -> dict[str, Any]:
    """Project ``name`` from ``data`` trained without augmentation; timings and threshold."""
    from services.data.projects import create_project
    from services.inference.batches import get_active_model
    from services.training.project import train_project

    out: dict[str, Any] = {"project": name}
    if not (reuse and _has_model(ctx, name)):
        t = time.monotonic()
        create_project(ctx, name, data)
        out["import_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        train_project(ctx, name, shots=shots, seed=0, augmentation=None)
        out["train_s"] = round(time.monotonic() - t, 1)
    rule = get_active_model(ctx, name).rule
    out["threshold"] = {"method": rule.method, "value": rule.value}
    return out


def stress(ctx: Any, name: str, reuse: bool) -> dict[str, Any]:
    """The stress test of the model in use as a job (both parts, the page's defaults)."""
    from services.evaluation.stress import (
        KIND,
        detectability_sentences,
        latest_stress,
        robustness_sentences,
        stress_payload,
    )
    from services.inference.batches import get_active_model
    from services.jobs.api import submit_inline

    mv_id = get_active_model(ctx, name).model_version_id
    result = latest_stress(ctx, name, mv_id) if reuse else None
    took = None
    if result is None:
        t = time.monotonic()
        _, result = submit_inline(ctx, KIND, stress_payload(ctx, name, mv_id))
        took = round(time.monotonic() - t, 1)
    det, rob = result["detectability"], result["robustness"]
    return {
        "stress_s": took, "model": result["model_label"], "threshold": result["threshold"],
        "n_images": result["n_images"], "image_side": result["image_side"],
        "baseline": result["baseline"],
        "detectability": {
            "kind": det["kind"], "rate": det["rate"], "problem": det.get("problem"),
            "rows": [{k: r[k] for k in ("area", "contrast", "detected", "n",
                                        "detection_rate")} for r in det["rows"]],
            "smallest": det["smallest"], "sentences": detectability_sentences(det)},
        "robustness": {
            "rows": [{k: r[k] for k in ("transform", "strength", "mean_score", "max_score",
                                        "share_over", "margin")} for r in rob["rows"]],
            "pushes_over": rob["pushes_over"], "sentences": robustness_sentences(rob)},
    }


def good_only(home: Path, count: int) -> Path:
    """``count`` toothbrush ``train/good`` images in a flat ``good/`` folder."""
    out = home / "data" / "good-only"
    for f in sorted((DATASETS / "toothbrush" / "train" / "good").iterdir())[:count]:
        _copy(f, out / "good" / f.name)
    return out


def synthetic_info(ctx: Any, name: str) -> dict[str, Any]:
    """What the Evaluation page shows about the synthetic defects of the model in use."""
    from services.evaluation.report import load_evaluation
    from services.inference.batches import get_active_model

    ev = load_evaluation(ctx, name, get_active_model(ctx, name).model_version_id)
    return {"n_good": ev.n_good, "n_defect": ev.n_defect, "n_synthetic": ev.n_synthetic}


def preset(ctx: Any, name: str) -> dict[str, Any]:
    from services.augmentation.presets import mark_for_training, save_preset

    saved = save_preset(ctx, name, PRESET, PRESET_CONFIG)
    mark_for_training(ctx, name, PRESET)
    return {"project": name, "preset": PRESET, "summary": saved.get("summary")}


# --------------------------------------------------------------------------- browser


def _section(page: Any, heading: str, name: str) -> Path:
    """From the heading starting with ``heading`` to the end of the page, main column only.

    The window is made as tall as the section and the heading scrolled to its top: a page
    taller than a screenshot can be (a gallery of hundreds of heatmaps above) still works.
    """
    from tests.e2e.test_browser import SCREENSHOTS

    size = page.viewport_size
    head = page.get_by_role("heading", name=re.compile(f"^{re.escape(heading)}"))
    main = page.locator('[data-testid="stMainBlockContainer"]')
    tall = main.evaluate("(m, h) => m.getBoundingClientRect().bottom - h.getBoundingClientRect()"
                         ".top", head.element_handle())
    page.set_viewport_size({"width": size["width"], "height": min(int(tall) + 60, 9000)})
    page.wait_for_timeout(800)
    head.evaluate("h => h.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(800)
    top, box = head.bounding_box(), main.bounding_box()
    y = max(0.0, top["y"] - 10)
    bottom = min(box["y"] + box["height"], page.viewport_size["height"])
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), clip={"x": box["x"], "y": y, "width": box["width"],
                                          "height": bottom - y})
    page.set_viewport_size(size)
    return path


def shoot(home: Path, stress_projects: list[tuple[str, str]], synthetic: str | None,
          augmentation: str | None) -> dict[str, Any]:
    from bench._common import workbench_page
    from tests.e2e.test_browser import _settled, _shot

    shots: dict[str, Any] = {}

    def done(page: Any, key: str, path: Path) -> None:
        shots[key] = {"file": str(path.relative_to(ROOT)),
                      "exceptions": page.locator('[data-testid="stException"]').count()}

    with workbench_page(home) as (url, page):
        for dataset, project in stress_projects:
            page.goto(f"{url}/evaluation?project={quote(project)}")
            page.get_by_role("heading", name=f"Evaluation · {project}").wait_for()
            page.get_by_text("Smallest defect it catches", exact=True).wait_for()
            _settled(page)
            page.locator('[data-testid="stPlotlyChart"]').last.wait_for()
            slug = dataset.replace("_", "-")
            done(page, f"stress-{slug}", _shot(page, f"issue12-stress-{slug}"))
            done(page, f"stress-{slug}-section",
                 _section(page, "Stress test", f"issue12-stress-{slug}-section"))
        if synthetic:
            page.goto(f"{url}/evaluation?project={quote(synthetic)}")
            page.get_by_role("heading", name=f"Evaluation · {synthetic}").wait_for()
            page.get_by_role("heading", name="Worst mistakes at this threshold").wait_for()
            _settled(page)
            done(page, "synthetic-threshold", _shot(page, "issue12-synthetic-threshold"))
        if augmentation:
            page.goto(f"{url}/augmentation?project={quote(augmentation)}")
            page.get_by_role("heading", name=f"Augmentation · {augmentation}").wait_for()
            page.get_by_text("After", exact=True).first.wait_for()
            _settled(page)
            page.locator('[data-testid="stSelectbox"]').filter(
                has=page.get_by_text("Saved settings", exact=True)).click()
            page.get_by_role("option", name=re.compile(re.escape(PRESET))).click()
            page.get_by_text(re.compile(f"Loaded “{re.escape(PRESET)}”")).wait_for()
            page.get_by_text(re.compile("^Stain")).first.wait_for()  # per-image changes
            _settled(page)
            done(page, "augmentation", _shot(page, "issue12-augmentation"))
    return shots


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["toothbrush", "magnetic_tile"])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--max-test", type=int, default=60,
                        help="test images imported per test folder (default 60)")
    parser.add_argument("--good-only", type=int, default=20,
                        help="good images of the good-only project (0: leave it out)")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="kensa-issue12-shots-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["KENSA_HOME"] = str(home)
    os.environ["KENSA_DEMO"] = "0"  # only these projects
    os.environ.pop("DATABASE_URL", None)

    from services.context import Kensa

    report: dict[str, Any] = {"home": str(home), "shots": args.shots, "datasets": {}}
    stress_projects: list[tuple[str, str]] = []
    ctx = Kensa.create(home)
    try:
        for dataset in args.datasets:
            name = dataset.replace("_", " ")
            data = home / "data" / dataset
            entry: dict[str, Any] = {"subset": subset(DATASETS / dataset, data, args.max_test)}
            entry.update(train(ctx, name, data, args.shots, args.reuse))
            entry["stress"] = stress(ctx, name, args.reuse)
            report["datasets"][dataset] = entry
            stress_projects.append((dataset, name))
            print(json.dumps({dataset: entry}, default=str), file=sys.stderr, flush=True)
        synthetic = None
        if args.good_only:
            # at least 4 good images held out: the threshold is set between them and the
            # synthetic defects painted into them
            shots = max(1, min(args.shots, args.good_only - 4))
            entry = {"images": args.good_only, "shots": shots,
                     "source": "toothbrush/train/good (first by name)"}
            entry.update(train(ctx, GOOD_ONLY, good_only(home, args.good_only), shots,
                               args.reuse))
            entry.update(synthetic_info(ctx, GOOD_ONLY))
            report["synthetic_threshold"] = entry
            synthetic = GOOD_ONLY
        augmentation = stress_projects[0][1] if stress_projects else None
        if augmentation:
            report["augmentation"] = preset(ctx, augmentation)
    finally:
        ctx.close()
    report["screenshots"] = shoot(home, stress_projects, synthetic, augmentation)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Acceptance screenshots of the Explainability page: a true defect, a false alarm and a good
image of each real data set, as a first-time user would open them from a link.

Per data set (MVTec layout): a project in a fresh ``KENSA_HOME``, the default model trained at
``--shots`` good images, the test split scored as a lot, then three picks from that lot's
stored predictions:

* ``defect``: the highest-scoring image labelled defect (a true defect when called defect);
* ``false-alarm``: the highest-scoring image labelled good that the model calls defect; if the
  model calls every good image good, the highest-scoring good image ("closest to a false
  alarm", said in the JSON);
* ``good``: the lowest-scoring image labelled good.

Then ``streamlit run app.py`` on that home and a full-page screenshot of
``/explainability?project=NAME&image=SHA256`` per pick into ``screenshots/explain-<data
set>-<case>.png``. Prints JSON: per shot the file, image, label, score, threshold, verdict and
the explanation's regions.

    python bench/explain_shots.py [--datasets magnetic_tile toothbrush] [--shots 16]
                                  [--home DIR] [--reuse]

``--reuse`` keeps a project already trained in ``--home`` (only the screenshots are taken).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path("/work/shared/datasets")
LOT = "test split"


def prepare(home: Path, dataset: Path, shots: int, reuse: bool) -> tuple[str, list[dict]]:
    """Project, training and scored lot of ``dataset``; returns (project, picks)."""
    from services.context import Kensa
    from services.data.projects import create_project
    from services.inference.batches import batch_predictions, get_active_model, score_batch
    from services.training.project import train_project

    name = dataset.name.replace("_", " ")
    ctx = Kensa.create(home)
    timings: dict[str, float] = {}
    try:
        try:
            get_active_model(ctx, name)
            trained = reuse
        except LookupError:
            trained = False
        if not trained:
            t = time.monotonic()
            create_project(ctx, name, dataset)
            timings["import_s"] = time.monotonic() - t
            t = time.monotonic()
            train_project(ctx, name, shots=shots, seed=0)
            timings["train_s"] = time.monotonic() - t
            t = time.monotonic()
            score_batch(ctx, name, dataset / "test", LOT)
            timings["score_s"] = time.monotonic() - t
        active = get_active_model(ctx, name)
        rows = batch_predictions(ctx, name, LOT)
    finally:
        ctx.close()
    goods = sorted((r for r in rows if r["label"] == "good"), key=lambda r: r["raw_score"])
    defects = sorted((r for r in rows if r["label"] == "defect"), key=lambda r: r["raw_score"])
    alarms = [r for r in goods if r["verdict"] == "defect"]
    picks = [
        ("defect", defects[-1], "highest-scoring defect image"),
        ("false-alarm", alarms[-1] if alarms else goods[-1],
         "highest-scoring good image called defect" if alarms
         else "closest to a false alarm: no good image is called defect, this is the "
              "highest-scoring good image"),
        ("good", goods[0], "lowest-scoring good image"),
    ]
    counts = {"good images": len(goods), "defect images": len(defects),
              "false alarms": len(alarms),
              "missed defects": sum(r["verdict"] == "good" for r in defects)}
    out = [{"dataset": dataset.name, "case": case, "why": why, "sha256": r["image_sha256"],
            "image": str(Path(r["image_path"]).relative_to(dataset)), "label": r["label"],
            "score": r["raw_score"], "threshold": active.rule.value, "verdict": r["verdict"],
            "lot": counts, **timings}
           for case, r, why in picks]
    return name, out


def shoot(home: Path, shots: list[tuple[str, dict[str, Any]]]) -> None:
    """Full-page screenshots of the page on each pick; adds the page's own numbers."""
    from urllib.parse import quote

    from bench._common import workbench_page
    from tests.e2e.test_browser import _settled, _shot

    with workbench_page(home) as (url, page):
        for project, pick in shots:
            page.goto(f"{url}/explainability?project={quote(project)}"
                      f"&image={pick['sha256']}")
            heading = page.get_by_role("heading", name=f"Explainability · {project}")
            heading.wait_for()
            verdict = page.locator('[data-testid="stMainBlockContainer"] h3').filter(
                has_text="threshold").first
            verdict.wait_for()
            pick["page_verdict"] = verdict.inner_text().strip()
            page.get_by_role("heading", name="Downloads").wait_for()
            _settled(page)
            pick["page_exception"] = page.locator('[data-testid="stException"]').count()
            name = f"explain-{pick['dataset'].replace('_', '-')}-{pick['case']}"
            pick["screenshot"] = str(_shot(page, name).relative_to(ROOT))


def explain_numbers(home: Path, project: str, pick: dict[str, Any]) -> None:
    """The explanation's own numbers (the page shows the same): regions, p-value, words."""
    from services.context import Kensa
    from services.inference.explain import explain_image

    ctx = Kensa.create(home)
    try:
        e = explain_image(ctx, project, sha256=pick["sha256"])
    finally:
        ctx.close()
    pick.update(explained_verdict=e.verdict, explained_score=e.score, p_value=e.p_value,
                regions=[{"box": list(r.box), "kind": r.kind, "area_pct": round(r.area_pct, 2),
                          "nearest": [n.file_name for n in r.nearest]} for r in e.regions],
                words=e.confidence_words, summary=e.summary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["magnetic_tile", "toothbrush"])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="kensa-explain-shots-"))
    home.mkdir(parents=True, exist_ok=True)
    import os

    os.environ["KENSA_HOME"] = str(home)
    os.environ["KENSA_DEMO"] = "0"  # only the data sets' projects
    os.environ.pop("DATABASE_URL", None)
    shots: list[tuple[str, dict[str, Any]]] = []
    for name in args.datasets:
        project, picks = prepare(home, DATASETS / name, args.shots, args.reuse)
        for pick in picks:
            explain_numbers(home, project, pick)
            shots.append((project, pick))
    shoot(home, shots)
    print(json.dumps({"home": str(home), "shots": [p for _, p in shots]}, indent=2,
                     default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

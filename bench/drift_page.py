"""Benchmark the Drift page on 100 lots x 200 predictions (issue 10's budget: <= 1 s).

Run from the repo root: ``python bench/drift_page.py [--lots 100 --per-lot 200 --runs 3]``.
A tiny project is trained for real (96 px: a real bank, threshold and validation batch), then
the lots are written straight through the repositories (scoring 20 000 images would take an
hour and time nothing the page does). Every lot points at the same ``--files`` real image
files (64 px), with seeded random scores per lot and a lighting-like shift in the last tenth,
so the quality signals are computed from files like in production, but once per distinct image
(they are cached by sha256, as after the first view of real lots).

Timed, with embedding drift off (the page's default): ``service_s`` = ``drift_overview`` alone;
``first_render_s`` = the page's first full run in ``streamlit.testing.v1.AppTest`` (service
work + rendering, the page's ``st.cache_data`` empty); ``rerun_s`` = the median of ``--runs``
reruns (a widget change: the overview comes from the page's cache). Progress goes to stderr;
the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import db.repositories as repo  # noqa: E402
from db.models import Batch, utcnow  # noqa: E402
from engine.data import load_image_and_sha256  # noqa: E402
from services.context import Kensa  # noqa: E402
from services.data.projects import create_project  # noqa: E402
from services.inference.batches import get_active_model  # noqa: E402
from services.monitoring import drift_overview  # noqa: E402
from services.training.project import train_project  # noqa: E402
from tests.synthetic import make_mvtec, texture, write_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 1.0
PROJECT = "line"


def build(home: Path, data: Path, lots: int, per_lot: int, files: int) -> None:
    """Trained project + ``lots`` batches of ``per_lot`` predictions, through the repositories."""
    ctx = Kensa.create(home)
    try:
        root = make_mvtec(data / PROJECT, n_train=6, n_test_good=6, n_defect=2, size=96, seed=0)
        create_project(ctx, PROJECT, root)
        train_project(ctx, PROJECT, shots=None, seed=0, params={"image_size": 96})
        active = get_active_model(ctx, PROJECT)
        rng = np.random.default_rng(0)
        images = []
        for i in range(files):
            path = write_png(data / "parts" / f"part_{i:04d}.png", texture(rng, 64))
            images.append((str(path), load_image_and_sha256(path)[1]))
        normal = np.asarray(active.rule.normal_scores, float)
        mu, sd = float(normal.mean()), float(normal.std(ddof=1))
        start = utcnow() - timedelta(days=lots)
        with ctx.session() as s:
            for k in range(lots):
                batch = repo.create_batch(s, active.project_id, f"lot {k + 1:03d}", "bench")
                s.get(Batch, batch.id).started_at = start + timedelta(days=k)
                shift = 3 * sd if k >= lots * 9 // 10 else 0.0
                scores = rng.normal(mu + shift, sd, per_lot)
                repo.add_predictions(s, batch.id, [{
                    "image_sha256": images[j % files][1], "image_path": images[j % files][0],
                    "state_version_id": active.bank_version_id,
                    "threshold_id": active.threshold_id, "raw_score": float(v),
                    "normalized_score": float(active.calibration.normalized(v)),
                    "verdict": "defect" if v >= active.rule.value else "good",
                    "confidence": float(active.rule.confidence(v)), "regions": [],
                    "heatmap_path": None} for j, v in enumerate(scores)])
    finally:
        ctx.close()


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=100)
    parser.add_argument("--per-lot", type=int, default=200)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ.update(KENSA_HOME=str(home), KENSA_DEMO="0")
        os.environ.pop("DATABASE_URL", None)
        t = time.perf_counter()
        build(home, Path(tmp) / "data", args.lots, args.per_lot, args.files)
        built = time.perf_counter() - t
        print(f"[bench/drift_page] built in {built:.1f} s", file=sys.stderr, flush=True)
        ctx = Kensa.create(home)
        t = time.perf_counter()  # first call: the quality cache is filled from the files
        drift_overview(ctx, PROJECT, embedding=False)
        service_cold = time.perf_counter() - t
        t = time.perf_counter()
        overview = drift_overview(ctx, PROJECT, embedding=False)
        service = time.perf_counter() - t
        ctx.close()
        assert len(overview.lots) == args.lots
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params["project"] = PROJECT
        at.run()
        at.switch_page("app_pages/drift.py")
        t = time.perf_counter()
        at.run()
        first = time.perf_counter() - t
        assert not at.exception, at.exception
        assert any(h.value == "Control charts" for h in at.subheader), "page did not render"
        reruns = []
        for _ in range(args.runs):
            t = time.perf_counter()
            at.run()
            reruns.append(time.perf_counter() - t)
    rerun = statistics.median(reruns)
    out: dict[str, object] = {
        "bench": "drift_page", "lots": args.lots, "predictions_per_lot": args.per_lot,
        "distinct_image_files": args.files, "embedding": False, "build_s": round(built, 1),
        "service_first_s": round(service_cold, 3), "service_s": round(service, 3),
        "first_render_s": round(first, 3), "rerun_s": round(rerun, 3), "budget_s": BUDGET_S,
        "within_budget": first <= BUDGET_S, "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()

"""Benchmark a Datasets page rerun on a 500-image project (the issue's budget: 300 ms).

Run from the repo root: ``python bench/pages.py [--images 500 --runs 5]``. A timing, not a test:
on a busy shared machine a wall-clock bound in a unit test fails for reasons that are not in
the code. Progress goes to stderr; the last stdout line is one JSON object (median_ms, min_ms,
budget_ms, within_budget, load_avg_1m, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamlit.testing.v1 import AppTest  # noqa: E402

from services.context import Kensa  # noqa: E402
from services.data.projects import create_project  # noqa: E402
from tests.synthetic import make_mvtec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MS = 300


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    n_train = args.images * 3 // 5
    n_test = (args.images - n_train) // 2
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ.update(KENSA_HOME=str(home), KENSA_DEMO="0")
        os.environ.pop("DATABASE_URL", None)
        ctx = Kensa.create(home)
        root = make_mvtec(Path(tmp) / "big", n_train=n_train, n_test_good=n_test,
                          n_defect=args.images - n_train - n_test, size=64)
        create_project(ctx, "big", root)
        ctx.close()
        print(f"[bench/pages] {args.images} images imported", file=sys.stderr, flush=True)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params["project"] = "big"
        at.run()
        at.switch_page("app_pages/datasets.py")
        at.run()
        assert not at.exception, at.exception
        shown = [(m.label, m.value) for m in at.metric]
        assert ("Images", str(args.images)) in shown, shown  # the real page, not an empty one
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            at.run()
            times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    result: dict[str, object] = {
        "page": "datasets", "images": args.images, "runs": args.runs,
        "median_ms": round(median), "min_ms": round(min(times)), "budget_ms": BUDGET_MS,
        "within_budget": median < BUDGET_MS, "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()

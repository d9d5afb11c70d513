"""Acceptance screenshot of issue 14's model comparison, clicked through as a user would.

A toothbrush project (MVTec layout, ``--max-test`` test images per folder and all of
``train/good``) in a fresh ``KENSA_HOME``; the Training page opened in headless Chromium; the
offline models the page selects by default compared with a click on "Compare models" at
``--shots`` good images (the app's own job worker runs it); once the table is drawn, the
"Compare models" section → ``screenshots/issue14-compare-models.png``, and the result as JSON
on stdout.

    python bench/issue14_shots.py [--shots 8] [--max-test 8] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.issue12_shots import DATASETS, _section, subset  # noqa: E402

PROJECT = "toothbrush"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--max-test", type=int, default=8)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="kensa-issue14-shots-"))
    os.environ["KENSA_HOME"] = str(home)
    os.environ["KENSA_DEMO"] = "0"
    os.environ.pop("DATABASE_URL", None)

    from bench._common import workbench_page
    from services.context import Kensa
    from services.data.projects import create_project
    from services.training.compare import comparison_result
    from tests.e2e.test_browser import _settled

    data = home / "data" / PROJECT
    report: dict[str, Any] = {"subset": subset(DATASETS / PROJECT, data, args.max_test)}
    ctx = Kensa.create(home)
    try:
        create_project(ctx, PROJECT, data)
    finally:
        ctx.close()
    with workbench_page(home, timeout_ms=1_200_000) as (url, page):
        page.goto(f"{url}/training?project={quote(PROJECT)}")
        page.get_by_role("heading", name=f"Training · {PROJECT}").wait_for()
        _settled(page)
        page.get_by_text("A chosen number", exact=False).click()
        _settled(page)
        shots = page.get_by_role("spinbutton", name="Number of good images")
        shots.fill(str(args.shots))
        shots.press("Enter")
        _settled(page)
        page.get_by_role("button", name="Compare models").click()
        page.get_by_role("button", name="Use ").wait_for()  # the pick's button: table drawn
        _settled(page)
        report["screenshot"] = str(_section(page, "Compare models", "issue14-compare-models"))
        report["exceptions"] = page.locator('[data-testid="stException"]').count()
    ctx = Kensa.create(home)
    try:
        result = comparison_result(ctx, PROJECT) or {}
    finally:
        ctx.close()
    report.update({k: result.get(k) for k in ("pick", "reason", "shots", "n_held_out")})
    report["rows"] = [{k: r.get(k) for k in ("model", "image_auroc", "pixel_auroc", "f1",
                                            "fit_s", "ms_per_image", "peak_rss_mb", "error")}
                      for r in result.get("rows", [])]
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

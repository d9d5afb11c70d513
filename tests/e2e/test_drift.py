"""Drift monitor in a real browser: the demo model trained and two lots scored through the
services (the lots page has its own browser test), then the page's verdicts and charts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.e2e.test_browser import (  # noqa: F401 - fixtures used by name
    REPO,
    _nav,
    _no_error,
    _shot,
    browser_page,
    server,
)

pytestmark = pytest.mark.browser

DEMO = REPO / "demo_data" / "magnetic_tile_demo" / "test"
OVERVIEW_TIMEOUT_MS = 120_000


def _train_and_score(home: Path) -> None:
    """Demo model, then lot "good parts" (the held-back good images) and lot "mixed"
    (the defect images): the second must stand out from the reference."""
    from services.context import Kensa
    from services.inference.batches import score_batch
    from services.training.project import train_project
    from tests.trained import DEMO_PARAMS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ctx = Kensa.create(home)
    try:
        train_project(ctx, "demo", seed=0, params=DEMO_PARAMS)
        score_batch(ctx, "demo", DEMO / "good", "good parts")
        mixed = home / "inbox" / "mixed"
        for folder in DEMO.iterdir():
            if folder.name != "good":
                for image in folder.iterdir():
                    (mixed / folder.name).mkdir(parents=True, exist_ok=True)
                    (mixed / folder.name / image.name).write_bytes(image.read_bytes())
        score_batch(ctx, "demo", mixed, "mixed")
    finally:
        ctx.close()
        torch.set_num_threads(threads)


def test_drift_page_shows_verdicts_then_charts(browser_page, server: str,  # noqa: F811
                                               tmp_path: Path) -> None:
    page = browser_page
    page.goto(server)
    page.get_by_role("heading", name="demo").wait_for()  # the demo project exists now
    _train_and_score(tmp_path / "home")

    _nav(page, "Drift monitor")
    page.get_by_role("heading", name="Drift monitor · demo").wait_for()
    page.get_by_role("heading", name="Control charts").wait_for(timeout=OVERVIEW_TIMEOUT_MS)
    page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for()
    _no_error(page)
    body = page.inner_text('[data-testid="stMainBlockContainer"]')
    assert "good parts" in body and "mixed" in body
    assert any(word in body for word in ("Stable", "Watch", "Drift"))
    assert str(tmp_path) not in body  # no server paths in the main view
    page.get_by_role("heading", name="Update the model with new good images").wait_for()
    _shot(page, "drift")

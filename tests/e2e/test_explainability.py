"""Explainability in a real browser: a link to the demo's most defective test image opens the
page on that image, with its verdict, heatmap, regions and nearest good patches. The demo
model is trained through the services (the training flow has its own browser test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.test_browser import (  # noqa: F401 - fixtures used by name
    _no_error,
    _shot,
    browser_page,
    server,
)
from tests.e2e.test_lots import _train_demo

pytestmark = pytest.mark.browser


def _most_defective(home: Path) -> tuple[str, str]:
    """(sha256, file name) of the labelled-defect test image the demo model scores highest,
    from the validation predictions training stored."""
    from services.context import Kensa
    from services.inference.batches import batch_predictions, get_active_model
    from services.inference.batches import validation_batch_name as batch_name

    ctx = Kensa.create(home)
    try:
        active = get_active_model(ctx, "demo")
        rows = batch_predictions(ctx, "demo", batch_name(active.model_version_id))
        top = max((r for r in rows if r["label"] == "defect"), key=lambda r: r["raw_score"])
        assert top["raw_score"] >= active.rule.value, "the demo model misses every defect"
        return top["image_sha256"], Path(top["image_path"]).name
    finally:
        ctx.close()


def test_a_link_opens_the_explanation_of_a_defect(browser_page, server: str,  # noqa: F811
                                                  tmp_path: Path) -> None:
    page = browser_page
    page.goto(server)
    page.get_by_role("heading", name="demo").wait_for()  # the demo project exists now
    home = tmp_path / "home"
    _train_demo(home)
    sha, file_name = _most_defective(home)

    page.goto(f"{server}/explainability?project=demo&image={sha}")
    page.get_by_role("heading", name="Explainability · demo").wait_for()
    main = page.locator('[data-testid="stMainBlockContainer"]')
    main.get_by_text(re.compile(r"Defect.*score [0-9.]+, threshold [0-9.]+")).first.wait_for()
    page.get_by_role("heading", name="Closest good patches").wait_for()
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    _no_error(page)
    assert f"image={sha}" in page.url  # the link still names the image
    body = main.inner_text()
    assert file_name in body
    assert sha not in body and str(home) not in body  # no fingerprint, no server path
    assert page.get_by_role("button", name=re.compile("This is normal")).count() == 1
    _shot(page, "explainability")

    # the confirmation says what happens before anything changes
    page.get_by_role("button", name=re.compile("This is normal")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("roll back", exact=False).first.wait_for()
    dialog.get_by_role("button", name="Cancel").click()
    page.get_by_role("dialog").wait_for(state="detached")  # closed, nothing changed
    _no_error(page)

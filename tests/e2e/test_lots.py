"""Production lots in a real browser: score a folder of demo images, follow the job, see the
table. The demo model is trained through the services (the training flow has its own browser
test); the folder lies in ``$KENSA_HOME/inbox``, one of the default import folders."""

from __future__ import annotations

import re
import shutil
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

SCORE_TIMEOUT_MS = 240_000


def _train_demo(home: Path) -> None:
    from services.context import Kensa
    from services.training.project import train_project
    from tests.trained import DEMO_PARAMS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ctx = Kensa.create(home)
    try:
        train_project(ctx, "demo", seed=0, params=DEMO_PARAMS)
    finally:
        ctx.close()
        torch.set_num_threads(threads)


def test_score_a_folder_as_a_lot(browser_page, server: str, tmp_path: Path) -> None:  # noqa: F811
    page = browser_page
    page.goto(server)
    page.get_by_role("heading", name="demo").wait_for()  # the demo project exists now
    home = tmp_path / "home"
    _train_demo(home)
    folder = home / "inbox" / "line 3"
    shutil.copytree(REPO / "demo_data" / "magnetic_tile_demo" / "test", folder)
    n_images = sum(1 for p in folder.rglob("*") if p.is_file())

    _nav(page, "Production lots")
    page.get_by_role("heading", name="Production lots · demo").wait_for()
    page.get_by_text("No lot scored yet").wait_for()
    _no_error(page)
    page.get_by_role("textbox", name="Lot name").first.fill("2026-11-27 line 3")
    page.get_by_role("textbox", name="Folder with the images").fill(str(folder))
    page.get_by_role("button", name=re.compile("Score")).first.click()
    done = page.get_by_text(re.compile(r"new images? scored, 0 already scored"))
    done.wait_for(timeout=SCORE_TIMEOUT_MS)
    assert f"{n_images} new images scored" in done.inner_text()
    page.get_by_role("heading", name="Review").wait_for()
    page.locator('[data-testid="stDataFrame"]').nth(1).wait_for()
    _no_error(page)
    body = page.inner_text('[data-testid="stMainBlockContainer"]')
    assert str(folder) not in body  # no server paths in the main view
    _shot(page, "lots")

"""Issue 10's scenario once in a real browser: lots, a lighting drift and its alarm, an update
with shifted good images, the before/after comparison, a rollback.

The service-level story (and its numbers) is ``tests/services/monitoring/test_scenario.py``;
this one checks that a person can follow it on the pages. Through the services (fast, no
browser): the demo model is trained, 3 normal lots and 2 lots under a moved lamp
(:func:`tests.synthetic.lighting_shift`) are scored, each lot built from the demo's 10
held-back good images under a slightly different exposure (±2 %: not byte copies of each
other; flips or rotations are NOT normal for these striped tiles, the model rightly flags
them). In Chromium:
the Production lots table, the Drift monitor's alarm, 5 shifted good images uploaded through
the update form with the confirmation ticked, the comparison, the rollback. Screenshots:
``screenshots/lots-table.png``, ``drift-alarm.png``, ``version-compare.png``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import expect

from tests.e2e.test_browser import (  # noqa: F401 - fixtures used by name
    REPO,
    _nav,
    _no_error,
    _settled,
    _shot,
    browser_page,
    server,
)
from tests.synthetic import lighting_shift, write_png

pytestmark = pytest.mark.browser

GOOD = REPO / "demo_data" / "magnetic_tile_demo" / "test" / "good"
NORMAL_LOTS = ("lot 1", "lot 2", "lot 3")
SHIFTED_LOTS = ("lot 4", "lot 5")
SHIFT = 1.5  # the lamp's hot spot: +150 % brightness at its centre
JOB_TIMEOUT_MS = 180_000


#: Exposure per lot (lots 1-5) and for the images a person confirms on the page.
GAINS = (1.0, 0.98, 1.02, 1.0, 0.98)
CONFIRMED_GAIN = 1.01


def _exposure(image: np.ndarray, gain: float) -> np.ndarray:
    """The same good part, the camera's exposure off by ``gain``."""
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _shifted(image: np.ndarray) -> np.ndarray:
    """The part under the moved lamp: a hot spot at a third of its width and height."""
    h, w = image.shape[:2]
    return lighting_shift(image, SHIFT, centre=(w // 3, h // 3), radius=min(h, w) / 3)


def _write_lot(folder: Path, gain: float, shifted: bool) -> Path:
    for path in sorted(GOOD.iterdir()):
        image = _exposure(np.asarray(Image.open(path).convert("L")), gain)
        write_png(folder / f"{path.stem}.png", _shifted(image) if shifted else image)
    return folder


def prepare(home: Path) -> Path:
    """Train the demo, score the five lots; returns a folder of 5 shifted good images that
    were in no lot (the ones a person confirms as good on the page)."""
    from services.context import Kensa
    from services.inference.batches import score_batch
    from services.training.project import train_project
    from tests.trained import DEMO_PARAMS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ctx = Kensa.create(home)
    try:
        train_project(ctx, "demo", seed=0, params=DEMO_PARAMS)
        for k, lot in enumerate(NORMAL_LOTS + SHIFTED_LOTS):
            folder = _write_lot(home / "inbox" / lot.replace(" ", "_"), GAINS[k],
                                shifted=lot in SHIFTED_LOTS)
            score_batch(ctx, "demo", folder, lot)
    finally:
        ctx.close()
        torch.set_num_threads(threads)
    confirmed = home / "confirmed"
    for path in sorted(GOOD.iterdir())[:5]:
        image = _exposure(np.asarray(Image.open(path).convert("L")), CONFIRMED_GAIN)
        write_png(confirmed / f"shifted_{path.stem}.png", _shifted(image))
    return confirmed


def test_drift_alarm_update_compare_roll_back(browser_page, server: str,  # noqa: F811
                                              tmp_path: Path) -> None:
    page = browser_page
    page.goto(server)
    page.get_by_role("heading", name="demo").wait_for()  # the demo project exists now
    confirmed = prepare(tmp_path / "home")

    # 1. the lots, newest first, with their counts
    _nav(page, "Production lots")
    page.get_by_role("heading", name="Production lots · demo").wait_for()
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    _no_error(page)
    body = page.inner_text('[data-testid="stMainBlockContainer"]')
    assert str(tmp_path) not in body
    _shot(page, "lots-table")

    # 2. the drift monitor raises the alarm on the shifted lots
    _nav(page, "Drift monitor")
    page.get_by_role("heading", name="Drift monitor · demo").wait_for()
    page.get_by_role("heading", name="Control charts").wait_for(timeout=JOB_TIMEOUT_MS)
    page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for()
    _no_error(page)
    alarm = page.locator('[data-testid="stAlert"]').first.inner_text()
    assert "Drift in 2 of 5 lots (lot 4, lot 5)" in alarm, alarm  # the normal lots: stable
    _shot(page, "drift-alarm")

    # 3. a person uploads 5 shifted good images, confirms them, adds them
    page.get_by_role("tab", name="Upload images").click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        sorted(str(p) for p in confirmed.iterdir()))
    add = page.get_by_role("button", name="Add to the model").last
    expect(add).to_be_enabled(timeout=JOB_TIMEOUT_MS)  # the uploads reached the server
    page.get_by_role("checkbox", name="I checked them: they are good").last.check(force=True)
    _settled(page)
    add.click()
    heading = page.get_by_role("heading", name=re.compile("Before and after"))
    heading.wait_for(timeout=JOB_TIMEOUT_MS)
    page.get_by_text("The model was updated").wait_for()
    page.get_by_text(re.compile(r"5 image\(s\) learned since")).wait_for(timeout=JOB_TIMEOUT_MS)
    page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()
    _no_error(page)
    body = page.inner_text('[data-testid="stMainBlockContainer"]')
    assert "Before and after: Model 1 → Model 1 · update 1" in body
    assert "shifted_exp1_num_106729.png" in body  # the uploads by the names they were given
    assert not re.search(r"[0-9a-f]{16}-shifted", body)  # not by their names on disk
    assert str(tmp_path) not in body
    heading.scroll_into_view_if_needed()
    _shot(page, "version-compare")

    # 4. roll back to the trained version
    page.get_by_role("button", name=re.compile("Roll back to")).click()
    page.get_by_role("dialog").get_by_role("button", name="Roll back").click()
    page.get_by_role("dialog").wait_for(state="detached")
    _no_error(page)
    newest = _versions(tmp_path / "home")[-1]  # the table is a canvas: ask the service
    assert (newest["kind"], newest["parent"], newest["active"]) == ("rollback", 1, True)


def _versions(home: Path) -> list[dict]:
    from services.context import Kensa
    from services.history.adaptation import versions

    ctx = Kensa.create(home)
    try:
        return versions(ctx, "demo")
    finally:
        ctx.close()

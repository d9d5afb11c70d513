"""Augmentation page in a real browser: switch a change on, move its sliders with the keyboard,
see the after-images change, save a preset, reload, and find it again.

Uses the demo project the server creates on its first start (no training needed). Screenshots
go to ``screenshots/`` like the other browser tests, and to ``/tmp/shots/`` for a quick look.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_browser import (  # noqa: F401 - fixtures used by name
    _nav,
    _no_error,
    _settled,
    _shot,
    browser_page,
    server,
)

pytestmark = pytest.mark.browser

PRESET = "small turns"
#: The ``src`` of every after-image of the grid, in order (a new picture gets a new address).
AFTER_SRCS = """() => Array.from(document.querySelectorAll('[data-testid="stImage"]'))
    .filter(el => (el.querySelector('[data-testid="stImageCaption"]') || {}).innerText === 'After')
    .map(el => el.querySelector('img').getAttribute('src'))"""
CHANGED = f"(old) => {{ const now = ({AFTER_SRCS})(); return now.length === old.length && " \
          "now.some((src, i) => src !== old[i]); }"


def _save_shot(page, name: str) -> None:
    _shot(page, f"augmentation_{name}")  # screenshots/augmentation_<name>.png


def _after(page) -> list[str]:
    return page.evaluate(AFTER_SRCS)


def _slider(page, label: str, thumb: int = 0):
    """The ``thumb``-th handle of the slider labelled ``label`` (a range has two)."""
    box = page.locator('[data-testid="stSlider"]').filter(
        has=page.get_by_text(label, exact=True))
    return box.get_by_role("slider").nth(thumb)


def _press(page, handle, key: str, times: int = 1) -> None:
    """Keys on a slider handle, then leave it: its value is sent and the page reruns."""
    handle.focus()
    for _ in range(times):
        page.keyboard.press(key)
    page.keyboard.press("Tab")


def test_sliders_change_the_grid_and_a_preset_survives_a_reload(
    browser_page, server: str  # noqa: F811
) -> None:
    page = browser_page
    page.goto(server)
    page.get_by_role("heading", name="demo").wait_for()  # the demo project exists now
    _nav(page, "Augmentation")
    page.get_by_role("heading", name="Augmentation · demo").wait_for()
    page.get_by_text("After", exact=True).first.wait_for()
    # the grid's images arrive one by one: wait for all twelve before reading them
    page.wait_for_function(f"() => ({AFTER_SRCS})().length === 12")
    _no_error(page)
    original = _after(page)
    assert len(original) == 12
    _save_shot(page, "start")

    # switch on "Shift, turn and zoom slightly", always applied, then widen its turn angle
    page.get_by_text("Shift, turn and zoom slightly", exact=True).click()
    chance = _slider(page, "Chance")
    chance.wait_for()
    _press(page, chance, "End")
    page.wait_for_function(CHANGED, arg=original)
    _settled(page)
    assert float(chance.input_value()) == 1.0
    turned = _after(page)
    turn = _slider(page, "Turn (degrees)", thumb=1)
    before = float(turn.input_value())
    _press(page, turn, "ArrowRight", times=30)
    page.wait_for_function(CHANGED, arg=turned)
    _settled(page)
    assert float(turn.input_value()) == before + 30
    _no_error(page)
    main = page.locator('[data-testid="stMainBlockContainer"]')
    assert "Shift, turn and zoom slightly: " in main.inner_text()  # what each image got
    _save_shot(page, "sliders")

    # save the settings under a name
    name = page.get_by_label("Save the current settings as", exact=True)
    name.fill(PRESET)
    name.press("Enter")
    _settled(page)
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_text(f"Saved as “{PRESET}”.").wait_for()
    _no_error(page)
    _save_shot(page, "saved")

    # a reload starts a new session: the preset is still there and loads the sliders back
    page.reload()
    page.get_by_role("heading", name="Augmentation · demo").wait_for()
    page.get_by_text("After", exact=True).first.wait_for()
    _settled(page)
    assert "project=demo" in page.url
    presets = page.locator('[data-testid="stSelectbox"]').filter(
        has=page.get_by_text("Saved settings", exact=True))
    presets.click()
    page.get_by_role("option", name=PRESET).click()
    page.get_by_text(re.compile(f"Loaded “{PRESET}”")).wait_for()
    _settled(page)
    assert float(_slider(page, "Turn (degrees)", thumb=1).input_value()) == before + 30
    _no_error(page)
    _save_shot(page, "reloaded")

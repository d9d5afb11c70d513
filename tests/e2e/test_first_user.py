"""A first-time user's walk in a real browser, over the points issue 9 listed as trip-ups.

The demo's gallery (opens on good images, dependent filters reset together, a thumbnail opens
its details, a reload keeps the project), a 200-image folder import, a zip upload, and the
Evaluation page of a project with only 8 held-out images (it must say the numbers are
fragile and show an estimate from images that did not choose the threshold). Screenshots go
to ``screenshots/first-user-*.png``. The small project is trained through the services with
96 px images (seconds); training through the browser is test_browser.py's walk.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_browser import (
    _no_error,
    _settled,
    _shot,
    _start,
    _stop,
    _wait_healthy,
    browser_page,  # noqa: F401 - the fixture, used by name
)

pytestmark = pytest.mark.browser

IMPORT_TIMEOUT_MS = 180_000


@pytest.fixture
def walk_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A workbench whose import folders include this test's temporary folder."""
    monkeypatch.setenv("KENSA_IMPORT_ROOTS", str(tmp_path))
    log = tmp_path / "streamlit.log"
    url, proc = _start(tmp_path / "home", log)
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        _stop(proc)
        print(f"--- streamlit log\n{log.read_text()[-3000:]}")


def _train_small(home: Path, name: str, folder: Path) -> None:
    """A project with 8 held-out images, trained like tests/trained.py (96 px, seconds)."""
    from services.context import Kensa
    from services.data.projects import create_project
    from services.training.project import train_project
    from tests.synthetic import make_mvtec
    from tests.trained import PARAMS

    ctx = Kensa.create(home, f"sqlite:///{home / 'kensa.db'}")
    try:
        create_project(ctx, name, make_mvtec(folder, n_train=3, n_test_good=4, n_defect=4))
        train_project(ctx, name, shots=None, seed=0, params=PARAMS)
    finally:
        ctx.close()


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (Streamlit renders a combobox)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label)
    box.locator('[role="combobox"], input').first.click()
    page.get_by_role("option", name=option, exact=True).click()
    _settled(page)


def _value(box) -> str:
    """What a selectbox shows (an input's value, or the text beside its label)."""
    inputs = box.locator("input")
    if inputs.count():
        return inputs.first.input_value() or inputs.first.get_attribute("placeholder") or ""
    return box.inner_text()


def _new_project(page) -> None:
    page.get_by_role("button", name=re.compile("New project")).click()
    page.get_by_role("heading", name="New project").wait_for()


def test_first_user_walk(browser_page, walk_server: str, tmp_path: Path) -> None:  # noqa: F811
    from tests.synthetic import make_mvtec

    page = browser_page
    home = tmp_path / "home"
    page.goto(walk_server)
    page.get_by_role("heading", name="demo").wait_for()
    _train_small(home, "metal plate", tmp_path / "metal")

    # Home: models numbered per project, quality on the card, no server paths
    page.reload()
    page.get_by_role("heading", name="metal plate").wait_for()
    # the card renders after its heading: wait for its model line, not for the first card's
    page.get_by_text("Model 1").first.wait_for()
    page.get_by_text("Good vs defect (AUROC)").first.wait_for()
    body = page.inner_text("body")
    assert "Model 1" in body and str(tmp_path) not in body
    _no_error(page)
    _shot(page, "first-user-home")

    # Datasets (demo): opens on good images; label -> defect -> a type -> back to All
    page.goto(f"{walk_server}/datasets?project=demo")
    page.get_by_role("heading", name="Gallery").wait_for()
    _settled(page)
    label_box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Label")
    assert _value(label_box) == "good"
    _choose(page, "Label", "defect")
    type_box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Defect type")
    type_box.locator('[role="combobox"], input').first.click()
    options = page.get_by_role("option")
    options.nth(1).click()  # the first real defect type ("All" is first)
    _settled(page)
    _choose(page, "Label", "All")
    assert _value(type_box) == "All"
    assert page.get_by_text("No image matches these filters").count() == 0
    _no_error(page)
    _shot(page, "first-user-gallery")

    # A thumbnail's name opens its details (folder and type in the name)
    tile = page.get_by_role("button", name=re.compile(r"^(train|test) · ")).first
    tile.click()
    dialog = page.get_by_role("dialog")
    dialog.locator('[data-testid="stImage"]').wait_for()  # the preview
    dialog.locator('[data-testid="stDataFrame"]').wait_for()  # the details table
    _shot(page, "first-user-details")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")

    # A reload keeps the project
    page.reload()
    page.get_by_role("heading", name="Datasets · demo").wait_for()
    _no_error(page)

    # A 200-image folder on the server
    folder = make_mvtec(tmp_path / "line200", n_train=150, n_test_good=25, n_defect=25,
                        size=64, seed=3)
    _new_project(page)
    page.get_by_role("tab", name="Folder on this server").click()
    form = page.locator('[data-testid="stForm"]').filter(has_text="Folder path")
    form.get_by_role("textbox", name="Project name").fill("line 200")
    form.get_by_role("textbox", name="Folder path").fill(str(folder))
    form.get_by_role("button", name="Import folder").click()
    page.get_by_text(re.compile(r"Imported into")).wait_for(timeout=IMPORT_TIMEOUT_MS)
    page.get_by_role("heading", name="Datasets · line 200").wait_for()
    assert "200 usable in total" in page.inner_text("body")
    _no_error(page)
    _shot(page, "first-user-folder-200")

    # A zip upload
    buf = io.BytesIO()
    small = make_mvtec(tmp_path / "zipped", n_train=4, n_test_good=2, n_defect=2, seed=5)
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(small.rglob("*.png")):
            zf.write(path, f"bolts/{path.relative_to(small).as_posix()}")
    _new_project(page)
    form = page.locator('[data-testid="stForm"]').filter(has_text="Zip file with the images")
    form.get_by_role("textbox", name="Project name").fill("bolts")
    form.locator('input[type="file"]').set_input_files(
        files=[{"name": "bolts.zip", "mimeType": "application/zip", "buffer": buf.getvalue()}])
    page.wait_for_timeout(500)
    form.get_by_role("button", name="Import zip").click()
    page.get_by_text(re.compile(r"Imported into")).wait_for(timeout=IMPORT_TIMEOUT_MS)
    page.get_by_role("heading", name="Datasets · bolts").wait_for()
    _no_error(page)
    _shot(page, "first-user-zip")

    # Evaluation of the small project: few-image warning, honest estimate, every heatmap
    page.goto(f"{walk_server}/evaluation?project=metal%20plate")
    page.get_by_text(re.compile(r"These numbers rest on only 8 held-out image")).wait_for()
    page.get_by_text("On images that did not choose the threshold").wait_for()
    page.get_by_role("heading", name="Heatmaps of the evaluated images").wait_for()
    _no_error(page)
    _shot(page, "first-user-evaluation")

    # Training page: the run history fits the page, models named per project
    page.goto(f"{walk_server}/training?project=metal%20plate")
    page.get_by_text("Latest model, Model 1, is ready").wait_for()
    _no_error(page)
    _shot(page, "first-user-training")

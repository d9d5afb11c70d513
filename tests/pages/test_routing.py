"""The router: page files outside Streamlit's discovery, the project in the URL, light pages."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.pages.conftest import APP, open_app, texts

REPO = Path(APP).parent
DATASETS = "app_pages/datasets.py"
TRAINING = "app_pages/training.py"
#: Every page opens without torch, timm or anomalib: training and scoring run in worker
#: processes, and the first request (Home) must not wait for a cold torch import.
LIGHT_PAGES = ("app_pages/home.py", DATASETS, "app_pages/new_project.py", TRAINING,
               "app_pages/evaluation.py")
HEAVY = ("torch", "timm", "anomalib", "huggingface_hub")


def test_no_pages_folder_and_only_pages_in_app_pages() -> None:
    """A ``pages/`` folder next to app.py makes Streamlit list its files as pages until
    st.navigation has run once (DESIGN §9); app_pages/ holds only what app.py registers."""
    assert not (REPO / "pages").exists()
    registered = set(re.findall(r"app_pages/\w+\.py", (REPO / "app.py").read_text()))
    registered |= set(re.findall(r"app_pages/\w+\.py", (REPO / "ui" / "common.py").read_text()))
    on_disk = {f"app_pages/{p.name}" for p in (REPO / "app_pages").iterdir()
               if p.name != "__pycache__"}
    assert on_disk == registered


def test_no_streamlit_internals() -> None:
    for path in [REPO / "app.py", *(REPO / "app_pages").glob("*.py"), *(REPO / "ui").glob("*.py")]:
        source = path.read_text()
        for internal in ("streamlit.runtime", "PagesManager", "appTest", "streamlit.config"):
            assert internal not in source, f"{path.name} uses {internal}"


def _imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
    return modules


def test_pages_do_not_import_torch() -> None:
    """No page loads torch at import: a cold import of torch + timm costs seconds on a small
    machine, and the server only reads what workers computed."""
    modules = sorted({m for p in ("app.py", *LIGHT_PAGES) for m in _imported_modules(REPO / p)})
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], modules


def test_project_comes_from_the_url(home: Path, make_project) -> None:
    make_project("bolts", n_train=2, n_test_good=1, n_defect=1)
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    at = open_app(DATASETS, "widgets")
    assert not at.exception
    assert "Datasets · widgets" in texts(at)
    assert at.sidebar.selectbox[0].value == "widgets"
    at.run()  # a reload keeps it
    assert "Datasets · widgets" in texts(at)
    assert at.query_params["project"] == "widgets"


def test_first_visit_writes_the_project_into_the_url(home: Path, make_project) -> None:
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    at = open_app()
    assert at.query_params.get("project") == "widgets"
    assert at.sidebar.selectbox[0].value == "widgets"


def test_picking_a_project_writes_the_url_and_navigation_keeps_it(
    home: Path, make_project
) -> None:
    make_project("bolts", n_train=2, n_test_good=1, n_defect=1)
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    at = open_app(DATASETS, "bolts")
    at.sidebar.selectbox[0].select("widgets").run()
    assert not at.exception
    assert at.query_params["project"] == "widgets"
    assert "Datasets · widgets" in texts(at)
    # Streamlit's page menu drops the query string: the router puts the project back.
    at.query_params.clear()
    at.switch_page(TRAINING)
    at.run()
    assert "Training · widgets" in texts(at)
    assert at.query_params["project"] == "widgets"


def test_unknown_project_in_the_url_is_said_not_switched(home: Path, make_project) -> None:
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    for page in (TRAINING, DATASETS):
        at = open_app(page, "metal plate")
        assert not at.exception
        shown = texts(at)
        assert "There is no project named “metal plate”" in shown
        assert "widgets" not in shown.replace("“widgets”", "")  # nothing of another project
        assert at.sidebar.selectbox[0].value is None
        assert at.query_params["project"] == "metal plate"  # the link is left as it was
        assert "New project" not in [t.value for t in at.title]


def test_home_card_buttons_open_the_project(home: Path, make_project) -> None:
    make_project("bolts", n_train=2, n_test_good=1, n_defect=1)
    make_project("widgets", n_train=2, n_test_good=1, n_defect=1)
    at = open_app(project="bolts")
    train = [b for b in at.button if b.label == "Train"]
    assert len(train) == 2
    train[1].click().run()  # cards are listed by name: bolts, widgets
    assert not at.exception
    assert "Training · widgets" in texts(at)
    assert at.query_params["project"] == "widgets"

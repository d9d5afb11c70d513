"""Issue 8, access: names are shown as typed, never rendered as Markdown.

A project named ``![x](http://127.0.0.1:9/a.png)`` made every browser that opened the Home
page fetch that address, and ``[link](http://x)`` showed a link Kensa never wrote. Every page
is opened on a project, batch and file with such names, and every text that Streamlit renders
as Markdown (bodies, labels, help, captions, progress texts) is checked: the name must appear
there escaped, and its raw Markdown must appear nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import Message
from sqlalchemy import update

from db.models import Project
from services.context import Kensa
from services.data.names import clean_name
from services.data.projects import create_project, get_project
from services.inference.batches import score_batch
from tests.pages.conftest import open_app
from tests.synthetic import make_mvtec, texture, write_png
from ui.common import plain

NAME = "![x](http://127.0.0.1:9/a.png) [link](http://x) **bold** $x$"
BATCH = "[batch](http://127.0.0.1:9/b) :red[alarm] _it_"
FILE = "![f](http:x.png) `code`.png"
#: Raw Markdown that must never reach a Markdown-rendering field.
RAW = ("![x](http://127.0.0.1:9/a.png)", "[link](http://x)", "**bold**", "$x$",
       "[batch](http://127.0.0.1:9/b)", ":red[alarm]", "![f](http:x.png)", "`code`")
#: Proto fields Streamlit renders as Markdown (alerts, headings, markdown, captions, widget
#: labels and help, image captions, progress and metric texts). Select options are plain.
MARKDOWN_FIELDS = {"body", "label", "help", "caption", "text"}

PAGES = (None, "app_pages/datasets.py", "app_pages/augmentation.py", "app_pages/training.py",
         "app_pages/evaluation.py", "app_pages/explainability.py", "app_pages/lots.py",
         "app_pages/drift.py")


def _strings(message: Message, field: str = "") -> Iterator[tuple[str, str]]:
    """Every (field name, string) in a proto, recursively."""
    for descriptor, value in message.ListFields():
        values = value if descriptor.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                yield from _strings(item, descriptor.name)
            elif isinstance(item, str):
                yield descriptor.name, item


def _markdown_texts(at: object) -> list[str]:
    """The strings of every element on the page that Streamlit renders as Markdown."""
    out: list[str] = []

    def walk(node: object) -> None:
        proto = getattr(node, "proto", None)
        if isinstance(proto, Message):
            out.extend(text for field, text in _strings(proto) if field in MARKDOWN_FIELDS)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)  # noqa: SLF001 - AppTest exposes no public walk over every element
    return out


@pytest.fixture
def hostile(home: Path, trained: Kensa, tmp_path: Path) -> Kensa:
    """The trained "widgets" project renamed to NAME, with a batch named BATCH; a second
    project holds an image named FILE."""
    assert clean_name(NAME) == NAME  # a name the create form accepts as typed
    with trained.session() as s:
        s.execute(update(Project).where(Project.name == "widgets").values(name=NAME))
    data = Path(get_project(trained, NAME)["data_root"])
    score_batch(trained, NAME, data / "test", f"  {BATCH} ")  # stored cleaned
    files = make_mvtec(tmp_path / "files", n_train=2, n_test_good=1, n_defect=1, size=32)
    write_png(files / "train" / "good" / FILE, texture(np.random.default_rng(3), 32))
    create_project(trained, "files", files)
    return trained


@pytest.mark.parametrize("page", PAGES)
def test_names_are_never_rendered_as_markdown(hostile: Kensa, page: str | None) -> None:
    at = open_app(page, project=NAME)
    assert not at.exception
    shown = _markdown_texts(at)
    leaks = [text for text in shown if any(raw in text for raw in RAW)]
    assert leaks == []
    if page is not None:  # the page's title names the project, escaped
        assert any(plain(NAME) in text for text in shown), shown
    else:  # the Home card: the project and its last batch
        assert any(plain(NAME) in text for text in shown)
        assert any(plain(BATCH) in text for text in shown)


def test_file_names_in_the_gallery_are_plain(hostile: Kensa) -> None:
    at = open_app("app_pages/datasets.py", project="files")
    assert not at.exception
    shown = _markdown_texts(at)
    assert [text for text in shown if any(raw in text for raw in RAW)] == []
    assert any(plain(FILE) in text for text in shown)


def test_plain_escapes_every_markdown_special() -> None:
    assert plain("a_b*c") == "a\\_b\\*c"
    assert plain(NAME).count("\\") == sum(not c.isalnum() and not c.isspace() for c in NAME)

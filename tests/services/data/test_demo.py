"""services.data.demo: the demo project appears once on a fresh install, never twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.context import Kensa
from services.data.demo import DEMO_SOURCE, ensure_demo
from services.data.projects import list_projects, project_status


def test_bundled_demo_is_small_and_complete() -> None:
    files = [p for p in DEMO_SOURCE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5 * 1024**2
    masks = {p.name for p in (DEMO_SOURCE / "ground_truth").rglob("*_mask.png")}
    defects = [p for p in (DEMO_SOURCE / "test").rglob("*.jpg") if p.parent.name != "good"]
    assert defects and {f"{p.stem}_mask.png" for p in defects} == masks


def test_two_sessions_starting_at_once_create_one_demo(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KENSA_DEMO", "1")
    contexts = [Kensa.create(home) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(ensure_demo, contexts))
    assert sorted(results, key=str) == [None, "demo"]
    assert [p["name"] for p in list_projects(contexts[0])] == ["demo"]
    images = project_status(contexts[0], "demo")["images"]
    assert images["per_label"] == {"defect": 15, "good": 30}
    assert ensure_demo(contexts[0]) is None  # later starts do nothing
    for ctx in contexts:
        ctx.close()


def test_no_demo_when_the_database_already_has_projects(
    home: Path, ctx: Kensa, make_project, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project("line1", n_train=2, n_test_good=1, n_defect=0)
    monkeypatch.setenv("KENSA_DEMO", "1")
    assert ensure_demo(ctx) is None
    assert [p["name"] for p in list_projects(ctx)] == ["line1"]


def test_demo_can_be_switched_off(home: Path, ctx: Kensa) -> None:
    assert ensure_demo(ctx) is None  # KENSA_DEMO=0 from the fixture
    assert list_projects(ctx) == []

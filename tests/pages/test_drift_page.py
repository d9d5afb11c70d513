"""Drift monitor page: verdicts in words, charts, and the adaptation flow (update, compare,
roll back) on a really trained project with lots scored through the services."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.context import Kensa
from services.history.adaptation import start_update, versions
from services.inference.batches import score_batch
from services.jobs.api import get_job
from services.monitoring.drift import drift_overview
from tests.pages.conftest import open_app, texts
from tests.synthetic import texture, write_png
from ui.common import DRIFT_PAGE, plain

PROJECT = "widgets"


def _lot(ctx: Kensa, folder: Path, name: str, seed: int, gain: float = 1.0) -> None:
    """A lot of fresh good textures (``gain`` > 1: brighter parts, as after a light change)."""
    rng = np.random.default_rng(seed)
    for i in range(5):
        image = np.clip(texture(rng, 96).astype(np.float64) * gain, 0, 255).astype(np.uint8)
        write_png(folder / f"part_{i:02d}.png", image)
    score_batch(ctx, PROJECT, folder, name)


@pytest.fixture
def two_lots(trained: Kensa, tmp_path: Path) -> Kensa:
    _lot(trained, tmp_path / "lots" / "a", "lot A", seed=11)
    _lot(trained, tmp_path / "lots" / "b", "lot B", seed=12, gain=1.6)
    return trained


def test_no_lot_says_so_in_plain_words(trained: Kensa) -> None:
    at = open_app(DRIFT_PAGE, PROJECT)
    assert not at.exception
    body = texts(at)
    assert "Drift monitor" in body and "No lot scored yet" in body
    assert not at.get("plotly_chart")


def test_verdicts_in_words_then_charts(two_lots: Kensa) -> None:
    expected = drift_overview(two_lots, PROJECT, embedding=False, store=False)
    at = open_app(DRIFT_PAGE, PROJECT)
    assert not at.exception, at.exception
    alerts = [e.value for kind in ("success", "warning", "error") for e in getattr(at, kind)]
    assert plain(expected.headline) in alerts  # the headline, coloured by the worst verdict
    worst = max((lot.verdict for lot in expected.lots),
                key=["stable", "watch", "drift"].index)
    colour = {"stable": at.success, "watch": at.warning, "drift": at.error}[worst]
    assert plain(expected.headline) in [e.value for e in colour]
    body = texts(at)
    words = {"stable": "Stable", "watch": "Watch", "drift": "Drift"}
    for lot in expected.lots:
        assert f"**{plain(lot.name)}**" in body and words[lot.verdict] in body
        for alert in lot.alerts:
            assert plain(alert) in body
    assert len(at.get("plotly_chart")) == 2  # box plot + control chart
    at.radio(key="drift-metric").set_value("reject_rate").run()
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert "Statistics per lot" in texts(at)


def test_update_compare_and_roll_back(two_lots: Kensa) -> None:
    at = open_app(DRIFT_PAGE, PROJECT)
    assert at.selectbox(key="adapt-lot").value == "lot B"  # the newest lot first
    at.selectbox(key="adapt-lot").set_value("lot A").run()
    pick = at.multiselect(key="adapt-pick-lot A")
    assert len(pick.options) >= 2
    pick.set_value(pick.options[:2]).run()  # options are in order: most clearly good first
    at.button(key="adapt-add-lot").click().run()  # a job, run inline by the test's settings
    assert not at.exception, at.exception
    rows = versions(two_lots, PROJECT)
    assert [(r["kind"], r["parent"], r["active"]) for r in rows][-1] == ("incremental", 1, True)
    assert rows[-1]["images_added"] == 2
    body = texts(at)
    assert "The model was updated" in body and "Before and after" in body
    facts = at.dataframe[-3].value  # the two versions, before/after scores, the versions
    assert list(facts["version"]) == [rows[0]["label"], rows[1]["label"]]
    assert facts["patch vectors"].iloc[1] > facts["patch vectors"].iloc[0]
    assert list(facts["learned in this version"])[1] == 2
    assert plain("2 image(s) learned since") in texts(at)
    summary = at.dataframe[-2].value
    assert set(summary["images"]) == {"validation images", "last lot (lot B)"}
    assert len(at.get("plotly_chart")) == 3  # box plot, control chart, paired plot

    # a lot scored with the new version: the charts tell the two versions apart
    _lot(two_lots, two_lots.home / "lots" / "c", "lot C", seed=13)
    at.run()
    labels = {rows[0]["label"], rows[1]["label"]}
    boxes = [t for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
             if t["type"] == "box"]
    lots_of = {}  # version label -> the lots (x) drawn as its boxes
    for t in boxes:
        lots_of.setdefault(t["name"].removesuffix(" · drift"), set()).update(t["x"])
    assert lots_of == {rows[0]["label"]: {0, 1}, rows[1]["label"]: {2}}
    colours = {t["name"].removesuffix(" · drift"): t["marker"]["color"] for t in boxes}
    assert set(colours) == labels and len(set(colours.values())) == 2
    shewhart = json.loads(at.get("plotly_chart")[1].proto.spec)["data"]
    points = {t["name"]: t["x"] for t in shewhart if t.get("mode") == "markers"
              and t["name"] in labels}
    assert points == {rows[0]["label"]: [0, 1], rows[1]["label"]: [2]}

    at.selectbox(key="rollback-version").set_value(1).run()
    at.button(key="rollback-open").click().run()
    assert "becomes the version in use again" in texts(at)
    at.button(key="rollback-yes").click().run()
    assert not at.exception, at.exception
    newest = versions(two_lots, PROJECT)[-1]
    assert (newest["kind"], newest["active"], newest["version"]) == ("rollback", True, 3)


def test_refusal_in_plain_words(trained: Kensa, tmp_path: Path) -> None:
    flat = tmp_path / "lots" / "flat"
    _lot(trained, tmp_path / "lots" / "a", "lot A", seed=11)
    flat.mkdir(parents=True)
    at = open_app(DRIFT_PAGE, PROJECT)
    # a flat grey image (degenerate) refused by the job this session follows (AppTest cannot
    # upload files, so the job is submitted here and handed to the page like a click would)
    image = np.full((96, 96, 3), 128, np.uint8)
    write_png(flat / "grey.png", image)
    job = get_job(trained, start_update(trained, PROJECT, [flat / "grey.png"]))
    assert job["status"] == "failed"
    at.session_state["_drift_update_job"] = job["id"]
    at.run()
    errors = " ".join(e.value for e in at.error)
    assert "The model was not updated" in errors and "grey" in errors
    assert str(tmp_path) not in errors


def test_adapt_from_lot_says_what_it_would_learn(two_lots: Kensa) -> None:
    """Lots of 5 images cannot fill a chunk of 8: the page says so and the button is off."""
    at = open_app(DRIFT_PAGE, PROJECT)
    at.selectbox(key="adapt-lot").set_value("lot A").run()
    assert not at.exception, at.exception
    body = texts(at)
    assert "Adapt from this lot automatically" in body and "in chunks of 8" in body
    assert "This lot now: 0 chunk(s) to learn" in body.replace("\\", "")
    assert at.button(key="adapt-online").disabled

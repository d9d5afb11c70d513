"""The Evaluation page's stress test section through AppTest, on the tiny real training of
tests/trained.py: the button queues a job (no worker runs in the test), and a stored result is
drawn as two charts with their sentences, read back from the same job result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.context import Kensa
from services.evaluation.stress import (
    detectability_sentences,
    latest_stress,
    request_stress,
    robustness_sentences,
    stress_job,
)
from services.training.project import list_model_versions
from tests.pages.conftest import open_app, texts
from ui.common import plain

EVALUATION = "app_pages/evaluation.py"
SECTION = "Stress test: smallest defect it catches"
TINY = {"areas": (0.01, 0.05), "contrasts": (0.5, 1.0), "strengths": (0.5, 1.0),
        "transforms": ["blur", "noise"], "max_images": 3}


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def test_button_queues_a_stress_test_and_shows_its_progress(
    home: Path, trained: Kensa, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KENSA_JOBS_INLINE", "0")  # queued for a worker that never comes
    mv = list_model_versions(trained, "widgets")[0]["id"]
    at = open_app(EVALUATION, "widgets")
    assert not at.exception
    shown = texts(at)
    assert SECTION in shown and "No stress test of this model yet" in shown
    assert not at.get("plotly_chart")[3:]  # histogram, ROC, PR only
    _button(at, "Run the stress test").click().run()
    assert not at.exception
    job = stress_job(trained, "widgets", mv)
    assert (job["kind"], job["status"], job["payload"]["model_version_id"]) == (
        "stress_test", "queued", mv)
    assert _button(at, "Run the stress test").disabled
    assert any(p.proto.text.startswith("Stress test: waiting for a worker")
               for p in at.get("progress"))
    _button(at, "Cancel the stress test").click().run()
    assert stress_job(trained, "widgets", mv)["status"] == "cancelled"
    at.run()
    assert "The last stress test was cancelled" in texts(at)
    assert not _button(at, "Run the stress test").disabled


def test_a_stored_stress_test_is_drawn_with_its_sentences(home: Path, trained: Kensa) -> None:
    mv = list_model_versions(trained, "widgets")[0]["id"]
    request_stress(trained, "widgets", mv, **TINY)  # KENSA_JOBS_INLINE: it runs now
    result = latest_stress(trained, "widgets", mv)
    assert result is not None
    at = open_app(EVALUATION, "widgets")
    assert not at.exception
    shown = texts(at)
    for sentence in (detectability_sentences(result["detectability"])
                     + robustness_sentences(result["robustness"])):
        assert plain(sentence) in shown
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    det = next(c for c in charts if "caught" in c["layout"]["title"]["text"])
    assert [t["name"] for t in det["data"]] == ["full contrast", "half contrast"]
    full = [r for r in result["detectability"]["rows"] if r["contrast"] == 1.0]
    assert det["data"][0]["x"] == [r["area"] for r in full]
    assert det["data"][0]["y"] == [r["detection_rate"] for r in full]
    assert det["layout"]["xaxis"]["type"] == "log"
    rob = next(c for c in charts if "good-part score" in c["layout"]["title"]["text"])
    assert [t["name"] for t in rob["data"]] == ["Out of focus (soft)", "Grainy image"]
    blur = [r for r in result["robustness"]["rows"] if r["transform"] == "blur"]
    assert rob["data"][0]["y"] == [r["max_score"] for r in blur]
    (line,) = [s for s in rob["layout"]["shapes"] if s["type"] == "line"]
    assert line["y0"] == line["y1"] == result["threshold"]

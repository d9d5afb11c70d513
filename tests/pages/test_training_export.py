"""The Training page's "Export the model" section through AppTest, on the tiny real training of
tests/trained.py: the button queues an export job with its progress and Cancel, and (jobs run
inline) a finished export offers its zip with the parity figure in words."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.context import Kensa
from services.inference.export import export_archive, export_job
from services.training.project import list_model_versions
from tests.pages.conftest import open_app, texts

TRAINING = "app_pages/training.py"


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def test_export_is_queued_with_progress_and_can_be_cancelled(
        home: Path, trained: Kensa, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KENSA_JOBS_INLINE", "0")  # queued for a worker that never comes
    mv = list_model_versions(trained, "widgets")[0]["id"]
    at = open_app(TRAINING, "widgets")
    assert not at.exception
    assert "Export the model" in texts(at) and "Files of **Model 2**" in texts(at)
    assert at.radio(key="tr_export_format").value == "openvino"
    at.checkbox(key="tr_export_fp16").check()
    _button(at, "Export").click().run()
    assert not at.exception
    job = export_job(trained, "widgets", mv)
    assert (job["kind"], job["status"], job["payload"]["format"], job["payload"]["fp16"]) == (
        "export", "queued", "openvino", True)
    assert _button(at, "Export").disabled
    assert any(p.proto.text.startswith("Export: waiting for a worker")
               for p in at.get("progress"))
    _button(at, "Cancel the export").click().run()
    assert export_job(trained, "widgets", mv)["status"] == "cancelled"
    at.run()
    assert "The last export was cancelled" in texts(at)


def test_finished_export_offers_the_zip_and_the_parity(home: Path, trained: Kensa) -> None:
    mv = list_model_versions(trained, "widgets")[0]["id"]
    at = open_app(TRAINING, "widgets")
    at.radio(key="tr_export_format").set_value("onnx").run()
    assert at.checkbox(key="tr_export_fp16").disabled
    _button(at, "Export").click().run()  # KENSA_JOBS_INLINE: the job runs now
    assert not at.exception
    job = export_job(trained, "widgets", mv)
    assert job["status"] == "done", job["error"]
    result = job["result"]
    shown = texts(at)
    assert (f"ONNX export of Model 2: on {result['n_images']} held-out image(s) its scores "
            f"differ from Kensa's by at most {result['parity_max_abs_diff']:.1e}") in shown
    downloads = at.get("download_button")
    assert len(downloads) == 1
    name, data = export_archive(trained, result)
    assert f"Download the ONNX files (zip, {len(data) / 2**20:.1f} MB)" in str(downloads[0].proto)
    assert name == "widgets-model-2-onnx.zip"

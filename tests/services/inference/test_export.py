"""Exporting a trained project's model: files, manifest, parity, refusals that leave nothing."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from engine.export.core import InferenceCore
from services.context import Kensa
from services.inference import export as export_service
from services.inference.export import ExportRefused, export_archive, export_model


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_checks_parity_and_a_mismatch_leaves_nothing_behind(
        ctx: Kensa, project: str, trained: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    stages: list[str] = []
    result = export_model(ctx, project, "openvino", progress=lambda s, f: stages.append(s))
    folder = ctx.resolve(result["folder"])
    assert folder == ctx.resolve(trained["artifact_dir"]) / "export" / "openvino"
    assert sorted(result["files"]) == ["export.json", "model.bin", "model.xml"]
    assert {name: _digest(folder / name) for name in result["files"]} == result["files"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["openvino"]  # no temp folder
    assert result["format"] == "openvino" and result["fp16"] is False
    assert 0 <= result["parity_max_abs_diff"] <= 1e-3
    assert result["n_images"] >= 6 and result["n_other_size"] == 0  # 2 spare goods + test
    assert result["input"]["shape"] == [1, 3, 96, 96]
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["threshold"] == result["threshold"] and manifest["main_file"] == "model.xml"
    assert stages[-1] == "done" and "checking the export on the validation images" in stages

    name, data = export_archive(ctx, result)
    assert name.endswith("-openvino.zip")
    assert sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) == sorted(result["files"])

    # an export whose graph is not the app's (the bank scaled by 2 %) is refused by name,
    # and the export that was there is kept byte for byte
    real = InferenceCore.from_model

    def tampered(model: Any, height: int, width: int) -> InferenceCore:
        core = real(model, height, width)
        core.bank.mul_(1.02)
        core.bank_sq.copy_(core.bank.square().sum(1))
        return core

    monkeypatch.setattr(InferenceCore, "from_model", tampered)
    with pytest.raises(ExportRefused, match=r"differs from the app .* on \S+\.png .*refused"):
        export_model(ctx, project, "openvino")
    with pytest.raises(ExportRefused, match=r"ONNX export of Model 1 differs .*refused"):
        export_model(ctx, project, "onnx")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["openvino"]
    assert {n: _digest(folder / n) for n in result["files"]} == result["files"]

    (folder / "model.bin").write_bytes(b"changed")
    with pytest.raises(ExportRefused, match="model.bin is missing or changed"):
        export_archive(ctx, result)


def test_requests_that_cannot_be_exported_are_refused_in_words(ctx: Kensa, project: str
                                                               ) -> None:
    with pytest.raises(ExportRefused, match="has no trained model yet"):
        export_model(ctx, project, "onnx")
    with pytest.raises(ExportRefused, match="unknown export format 'tflite'"):
        export_service.export_request(ctx, project, "tflite")
    with pytest.raises(ExportRefused, match="FP16 is offered for OpenVINO only"):
        export_service.export_request(ctx, project, "onnx", fp16=True)
    with pytest.raises(ExportRefused, match="has no Model 3"):
        export_service.export_request(ctx, project, "onnx", model_number=3)


def test_an_anomalib_zoo_model_exports_with_the_same_check(ctx: Kensa, project: str) -> None:
    """PaDiM (the zoo's export path: anomalib's normalisation and torch model) passes the same
    parity check into the same layout; stock anomalib PatchCore, which declares no export, is
    refused in words."""
    from services.training.project import request_training, run_training

    mv = run_training(ctx, request_training(ctx, project, shots=4, algorithm="anomalib_padim",
                                            params={"image_size": 96}))
    result = export_model(ctx, project, "onnx", model_version_id=mv["id"])
    assert result["model"] == "anomalib_padim" and result["main_file"] == "model.onnx"
    assert 0 <= result["parity_max_abs_diff"] <= 1e-3 and result["n_images"] >= 6
    assert "96x96 whatever the aspect ratio" in result["input"]["resize"]
    assert export_service.export_target(ctx, project)["exportable"] is True

    stock = run_training(ctx, request_training(ctx, project, shots=2,
                                               algorithm="anomalib_patchcore"))
    with pytest.raises(ExportRefused, match="anomalib_patchcore, which cannot be exported"):
        export_model(ctx, project, "onnx", model_version_id=stock["id"])

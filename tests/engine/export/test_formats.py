"""Exported files scored back through OpenVINO's CPU runtime against the app's scores."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.export.core import InferenceCore
from engine.export.formats import ExportedModel, ExportedRunner, export_core
from engine.export.parity import (
    TOLERANCE,
    ParityError,
    ParityReport,
    compare,
    require_parity,
    threshold_normalizer,
)
from engine.models.fewshot import FewShotConfig
from tests.engine.export.conftest import SIZE, Fitted, fitted_model, larger_than_shots


@pytest.fixture(scope="module")
def core(fitted: Fitted) -> InferenceCore:
    return InferenceCore.from_model(fitted.model, *fitted.batch.shape[-2:])


def _parity(fitted: Fitted, path: Path):
    runner = ExportedRunner(path)
    exported, maps = runner.score(fitted.batch)
    assert maps.shape == (len(fitted.images), *fitted.batch.shape[-2:])
    normalizer = threshold_normalizer(fitted.threshold, fitted.normal_scores)
    return compare(fitted.names, fitted.app_scores, exported, normalizer)


@pytest.fixture(scope="module")
def fp32(fitted: Fitted, core: InferenceCore, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, tuple[ExportedModel, ParityReport]]:
    """ONNX and OpenVINO FP32 files of the core, each with its parity report."""
    out = {}
    for fmt in ("onnx", "openvino"):
        exported = export_core(core, tmp_path_factory.mktemp(fmt), fmt)
        out[fmt] = exported, _parity(fitted, exported.path)
    return out


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp32_round_trip_within_tolerance(fp32: dict[str, tuple[ExportedModel, ParityReport]],
                                          fmt: str) -> None:
    exported, report = fp32[fmt]
    assert sorted(exported.files) == (["model.onnx"] if fmt == "onnx"
                                      else ["model.bin", "model.xml"])
    for name, digest in exported.files.items():
        assert hashlib.sha256((exported.folder / name).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in exported.folder.iterdir()) == sorted(exported.files)
    require_parity(report)
    assert report.max_abs_diff <= TOLERANCE
    # the defects are scored over the threshold and the goods under it, by both
    assert (report.exported[3:] >= 0.5).all() and (report.exported[:3] < 0.5).all()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_feature_alignment_survives_export(fmt: str, tmp_path: Path) -> None:
    """Batch standardization and style alignment (per-image statistics over the grid) in the
    exported graph: the file scores as the app does."""
    fitted = fitted_model(FewShotConfig(image_size=SIZE, normalization="batch",
                                        style_align=True), seed=3)
    core = InferenceCore.from_model(fitted.model, *fitted.batch.shape[-2:])
    report = _parity(fitted, export_core(core, tmp_path, fmt).path)
    require_parity(report)
    assert report.max_abs_diff <= TOLERANCE


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_the_coarse_view_survives_export(fmt: str, tmp_path: Path) -> None:
    """Images larger than the shots: the shrink, the second bank search and the capped mean
    are in the file, whose maps are the app's."""
    larger = larger_than_shots()
    core = InferenceCore.from_model(larger.model, *larger.batch.shape[-2:])
    assert core.coarse is not None
    exported = export_core(core, tmp_path, fmt)
    require_parity(_parity(larger, exported.path))
    _, maps = ExportedRunner(exported.path).score(larger.batch)
    with torch.no_grad():
        want = core(larger.batch)[1][:, 0].numpy()
    np.testing.assert_allclose(maps, want, rtol=0, atol=1e-3 * float(want.max()))


def test_fp16_is_measured_and_judged_by_the_same_rule(
        fitted: Fitted, core: InferenceCore, fp32: dict[str, tuple[ExportedModel, ParityReport]],
        tmp_path: Path) -> None:
    """FP16 stores the weights and the bank in half precision: the numbers move (5e-4
    normalized here, 3e-3 at 256 px), well below a verdict change but not always within
    1e-3, so FP16 files go through the same check; one that misses it is refused by name."""
    fp16 = _parity(fitted, export_core(core, tmp_path, "openvino", fp16=True).path)
    assert fp32["openvino"][1].max_abs_diff < 1e-5 < fp16.max_abs_diff < 0.05
    assert ((fp16.exported >= 0.5) == (fp16.app >= 0.5)).all()  # same verdicts
    strict = replace(fp16, tolerance=fp16.max_abs_diff / 2)
    with pytest.raises(ParityError, match=rf"{fitted.names[fp16.worst]} .*refused"):
        require_parity(strict)


def test_mismatching_export_is_refused_naming_the_worst_image(fitted: Fitted,
                                                              tmp_path: Path) -> None:
    """A file built from another bank (here: the bank shifted slightly) is refused, and the
    message names the image that differs most and by how much."""
    core = InferenceCore.from_model(fitted.model, *fitted.batch.shape[-2:])
    core.bank.mul_(1.02)
    core.bank_sq.copy_(core.bank.square().sum(1))
    report = _parity(fitted, export_core(core, tmp_path, "onnx").path)
    assert not report.ok
    with pytest.raises(ParityError) as err:
        require_parity(report)
    text = str(err.value)
    assert fitted.names[report.worst] in text and f"{report.max_abs_diff:.2e}" in text
    assert "refused" in text


def test_runner_refuses_the_wrong_input_size(
        fp32: dict[str, tuple[ExportedModel, ParityReport]]) -> None:
    runner = ExportedRunner(fp32["onnx"][0].path)
    with pytest.raises(ValueError, match=r"takes images of shape \[3, 96, 80\]"):
        runner.score(torch.zeros(1, 3, 96, 96))


def test_bad_requests_are_named(core: InferenceCore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_core(core, tmp_path, "tflite")
    with pytest.raises(ValueError, match="OpenVINO only"):
        export_core(core, tmp_path, "onnx", fp16=True)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.onnx could not be loaded"):
        ExportedRunner(tmp_path / "broken.onnx")
    with pytest.raises(ValueError, match="3 names, 2 app scores"):
        compare(["a", "b", "c"], [1.0, 2.0], [1.0, 2.0], lambda s: s)
    assert np.isfinite(threshold_normalizer(2.0, [1.0, 1.2])(np.array([1.5]))).all()

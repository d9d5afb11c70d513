"""Write an :class:`~engine.export.core.InferenceCore` as ONNX or OpenVINO IR, and run it back.

ONNX comes from torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): the
core has fixed shapes and no data-dependent control flow, which is exactly what tracing handles,
and it needs no package beyond ``onnx``. torch 2.14's default (dynamo) exporter also needs
``onnxscript`` and a ``torch.export`` of the timm backbone, more to install and more to go wrong
for no gain on a fixed-size graph. OpenVINO IR is converted from that ONNX file
(``openvino.convert_model``), so both formats hold the same graph; FP16 is OpenVINO's
``compress_to_fp16`` (weights and the bank stored as float16, computed in float32 on the CPU).

Every file is built in a private temporary folder and copied into ``folder`` atomically
(``engine.artifacts``); callers that need the whole set to appear at once (the export service)
give a folder of their own and rename it afterwards.

The runner pins OpenVINO's CPU ``INFERENCE_PRECISION_HINT`` to f32: on CPUs with bf16 units
OpenVINO otherwise computes in bfloat16 by default, which moves scores by ~1e-2 relative and is
not what parity measured. A deployment must set the same hint (the export's manifest says so).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from engine.artifacts import write_bytes_atomic
from engine.export.core import InferenceCore

Format = Literal["onnx", "openvino"]
FORMATS: tuple[str, ...] = ("onnx", "openvino")
ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")
#: what the runner and every deployment should compile with (see the module docstring)
CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass(frozen=True)
class ExportedModel:
    """Files written for one format: ``files`` maps each name to its sha256; ``main`` is the
    one to load (``model.onnx`` or ``model.xml``, whose ``model.bin`` sits beside it)."""

    format: str
    fp16: bool
    folder: Path
    main: str
    files: dict[str, str]
    input_shape: tuple[int, int, int, int]

    @property
    def path(self) -> Path:
        return self.folder / self.main


def _trace_onnx(core: InferenceCore, path: Path) -> None:
    """``core`` traced at batch 1 into ONNX at ``path`` (weights inside the one file)."""
    example = torch.zeros(1, *core.input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        # shape values read as Python numbers become constants: intended, the size is fixed
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        torch.onnx.export(core.eval(), (example,), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          opset_version=ONNX_OPSET, do_constant_folding=True)


def _copy_in(source: Path, folder: Path) -> tuple[str, str]:
    """``source`` copied atomically into ``folder`` under its own name -> (name, sha256)."""
    return source.name, write_bytes_atomic(folder / source.name, source.read_bytes())


def export_core(core: InferenceCore, folder: Path, fmt: str, fp16: bool = False
                ) -> ExportedModel:
    """Write ``core`` into ``folder`` as ``fmt`` ("onnx" or "openvino"; ``fp16`` only for
    OpenVINO). Each file appears whole or not at all."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    if fp16 and fmt != "openvino":
        raise ValueError("FP16 is offered for OpenVINO only (ONNX files are exported in FP32)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".building-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        _trace_onnx(core, onnx_path)
        if fmt == "onnx":
            built = [onnx_path]
        else:
            import openvino as ov

            xml = Path(tmp) / "ov" / "model.xml"
            xml.parent.mkdir()
            # compress_to_fp16 defaults to True in save_model: always say which one is meant
            ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=fp16)
            built = [xml, xml.with_suffix(".bin")]
        files = dict(_copy_in(p, folder) for p in built)
    return ExportedModel(fmt, fp16, folder, built[0].name, files, (1, *core.input_shape))


def export_all(core: InferenceCore, folder: Path) -> dict[str, ExportedModel]:
    """ONNX, OpenVINO FP32 and OpenVINO FP16 in sub-folders of ``folder`` (benchmarks)."""
    folder = Path(folder)
    return {"onnx": export_core(core, folder / "onnx", "onnx"),
            "openvino": export_core(core, folder / "openvino", "openvino"),
            "openvino-fp16": export_core(core, folder / "openvino-fp16", "openvino", fp16=True)}


class ExportedRunner:
    """Scores working-size batches with an exported file on the CPU through OpenVINO.

    OpenVINO reads ``.onnx`` and ``.xml`` alike, so one runner serves both formats (no
    onnxruntime needed). The graph takes one image at a time (batch 1); :meth:`score` loops.
    """

    def __init__(self, path: Path, config: dict[str, Any] | None = None) -> None:
        import openvino as ov

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported model {path} does not exist")
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", {**CPU_CONFIG,
                                                                       **(config or {})})
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise ValueError(f"exported model {path} could not be loaded: {first}") from None
        shape = self.compiled.input(0).get_partial_shape()
        self.input_shape = tuple(int(d.get_length()) for d in shape)
        self.path = path

    def score(self, images: torch.Tensor | np.ndarray | Sequence[np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
        """``[B,3,H,W]`` in [0,1] -> (raw scores [B] float64, maps [B,H,W] float32)."""
        batch = np.asarray(images.numpy() if isinstance(images, torch.Tensor) else images,
                           dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape[1:]:
            raise ValueError(f"{self.path.name} takes images of shape "
                             f"{list(self.input_shape[1:])}, got {list(batch.shape[1:])}")
        scores, maps = [], []
        for one in batch:
            out = self.compiled(one[None])
            scores.append(float(np.asarray(out[0]).reshape(-1)[0]))
            maps.append(np.asarray(out[1], dtype=np.float32)[0, 0])
        return np.asarray(scores, dtype=np.float64), np.stack(maps)

"""``export NAME --format ...`` of ``python -m services.cli``: a job run inline, JSON out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services import cli
from services.context import Kensa
from tests.services.test_cli import cli_env, run  # noqa: F401 - the fixture


def test_export_json_names_the_files_and_the_parity(
        cli_env: Kensa, trained: dict[str, Any],  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "export", "widgets", "--format", "onnx", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert sorted(result["files"]) == ["export.json", "model.onnx"]
    folder = cli_env.resolve(result["folder"])
    assert all((folder / name).is_file() for name in result["files"])
    assert result["parity_max_abs_diff"] <= 1e-3 and result["model_label"] == "Model 1"
    assert result["format"] == "onnx" and result["fp16"] is False

    code, out, _ = run(capsys, "export", "widgets", "--format", "onnx", "--model", "1")
    assert code == 0 and "Model 1 exported as onnx to" in out and "matches the app" in out
    assert f"{Path(folder)}" in out

    jobs = [j for j in json.loads(run(capsys, "--json", "jobs", "list")[1])
            if j["kind"] == "export"]
    assert len(jobs) == 2 and {j["status"] for j in jobs} == {"done"}


def test_export_refusals_are_one_line(cli_env: Kensa, project: str,  # noqa: F811
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "export", project, "--format", "onnx", "--fp16")
    assert code == 2 and err.strip() == ("error: FP16 is offered for OpenVINO only; ONNX "
                                         "files are FP32")
    code, _, err = run(capsys, "export", project, "--format", "openvino")
    assert code == 2 and "has no trained model yet" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        cli.main(["export", project, "--format", "tflite"])

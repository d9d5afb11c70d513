"""The project commands of ``python -m services.cli`` through ``main([...])``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services import cli
from services.context import Kensa


@pytest.fixture
def cli_env(ctx: Kensa, monkeypatch: pytest.MonkeyPatch) -> Kensa:
    monkeypatch.setenv("KENSA_HOME", str(ctx.home))
    monkeypatch.setenv("DATABASE_URL", ctx.database_url)
    return ctx


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_project_session_and_history_json(
    cli_env: Kensa, dataset: Path, new_goods, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "project", "create", "tiles", "--data", str(dataset))
    assert code == 0 and "12 images, 12 new" in out
    code, out, _ = run(capsys, "project", "create", "tiles", "--data", str(dataset))
    assert code == 0 and "re-imported" in out and "0 new" in out
    code, out, _ = run(capsys, "--json", "project", "list")
    assert [p["name"] for p in json.loads(out)] == ["tiles"]
    code, out, _ = run(capsys, "train", "tiles", "--shots", "4", "--seed", "0",
                       "--set", "image_size=96")
    assert code == 0 and "model version 1 done" in out
    code, out, _ = run(capsys, "score", "tiles", str(dataset / "test"), "--batch", "b1")
    assert code == 0 and "batch 'b1': 6 scored" in out
    code, out, _ = run(capsys, "score", "tiles", str(dataset / "test"), "--batch", "b1")
    assert code == 0 and "0 scored, 6 already scored" in out
    code, out, _ = run(capsys, "threshold", "set", "tiles", "40")
    assert code == 0 and "threshold 40.0000" in out
    code, out, _ = run(capsys, "update-bank", "tiles", str(new_goods(2)))
    assert code == 0 and "bank v2 (parent v1" in out
    assert "your manual threshold 40 was kept; the re-validated suggestion is" in out
    code, out, _ = run(capsys, "rollback", "tiles", "--to", "1")
    assert code == 0 and "bank v3 (rollback to v1) is active" in out
    code, out, _ = run(capsys, "history", "tiles")
    assert code == 0 and "rollback" in out and "predictions: 14" in out

    for argv in (["--json", "history", "tiles"], ["history", "tiles", "--json"]):
        code, out, _ = run(capsys, *argv)
        h = json.loads(out)
        assert code == 0
        assert [(b["version"], b["kind"], b["active"]) for b in h["memory_bank_versions"]] == [
            (1, "initial", False), (2, "incremental", False), (3, "rollback", True)
        ]
        # the update keeps the manual 40; the rollback copies what was active for v1 then
        assert [(t["method"], t["bank_version"], t["active"]) for t in h["thresholds"]] == [
            ("f1_optimal", 1, False), ("manual", 1, True), ("manual", 2, True),
            ("manual", 3, True),
        ]
        assert [t["raw_value"] for t in h["thresholds"][1:]] == [40.0, 40.0, 40.0]
        assert [t["in_use"] for t in h["thresholds"]] == [False, False, False, True]
        assert {b["name"]: b["predictions"] for b in h["batches"]} == {
            "validation-m1": 8, "b1": 6
        }
        assert h["predictions_count"] == 14


def test_errors_are_one_line_with_exit_code_2(
    cli_env: Kensa, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["history", "nope"], "no project named 'nope'"),
        (["project", "create", "x", "--data", str(tmp_path / "missing")], "folder not found"),
        (["train", "nope"], "no project named 'nope'"),
        (["score", "nope", str(dataset)], "score NAME PATH --batch BATCH"),
        (["train"], "give a project name"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    run(capsys, "project", "create", "tiles", "--data", str(dataset))
    code, _, err = run(capsys, "rollback", "tiles", "--to", "1")
    assert code == 2 and "no trained model yet" in err
    code, _, err = run(capsys, "threshold", "set", "tiles", "nan")
    assert code == 2 and err.startswith("error: ")
    code, _, err = run(capsys, "train", "tiles", "--preset", "no such preset")
    assert code == 2 and err.count("\n") == 1 and "no such preset" in err, err


@pytest.mark.parametrize("failure, expected", [
    (MemoryError(), "error: out of memory; try fewer or smaller images"),
    (OSError(28, "No space left on device", "/data/kensa/banks/x"),
     "error: No space left on device: /data/kensa/banks/x"),
    (PermissionError(13, "Permission denied", "/data/kensa/kensa.db"),
     "error: Permission denied: /data/kensa/kensa.db"),
    (KeyError("bank"), "error: 'bank'"),
    (TypeError(), "error: unexpected internal error; run again with KENSA_DEBUG=1"),
])
def test_every_failure_is_one_plain_line_with_exit_status_2(
    cli_env: Kensa, dataset: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, failure: BaseException, expected: str,
) -> None:
    import services.history.versions as versions

    run(capsys, "project", "create", "tiles", "--data", str(dataset))

    def broken(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(versions, "history", broken)
    monkeypatch.delenv("KENSA_DEBUG", raising=False)
    code, out, err = run(capsys, "history", "tiles")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert "Traceback" not in err and type(failure).__name__ not in err
    monkeypatch.setenv("KENSA_DEBUG", "1")  # the traceback, for whoever debugs it
    code, _, err = run(capsys, "history", "tiles")
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith(expected)


def test_interrupt_exits_130(cli_env: Kensa, dataset: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    import services.history.versions as versions

    run(capsys, "project", "create", "tiles", "--data", str(dataset))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(versions, "history", interrupted)
    code, _, err = run(capsys, "history", "tiles")
    assert code == 130 and err == "error: interrupted\n"


def test_poisoning_refusals_and_overrides_on_the_command_line(
    cli_env: Kensa, dataset: Path, new_goods, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "project", "create", "tiles", "--data", str(dataset))
    run(capsys, "train", "tiles", "--shots", "4", "--seed", "0", "--set", "image_size=96")
    for value in ("-1", "0", "1e308"):
        code, _, err = run(capsys, "threshold", "set", "tiles", value)
        assert code == 2 and "outside the sane range" in err and "--confirm" in err, err
    code, out, _ = run(capsys, "threshold", "set", "tiles", "1e308", "--confirm")
    assert code == 0 and "is active" in out
    folder = new_goods(1)
    defect = dataset / "test" / "spot" / "spot_001.png"
    code, _, err = run(capsys, "update-bank", "tiles", str(folder), str(defect))
    assert code == 2 and err.count("\n") == 1 and "spot_001.png is labelled defect" in err
    code, out, _ = run(capsys, "history", "tiles")
    assert code == 0 and "runs:" in out and "m1    kensa_patchcore" in out and " done " in out

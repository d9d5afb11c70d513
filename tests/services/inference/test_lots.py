"""Production lots: a folder or a zip scored as a job, resumed by sha256, reviewed, exported."""

from __future__ import annotations

import io
import shutil
import stat
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from db.models import utcnow
from services.context import Kensa
from services.data.imports import ImportRefused
from services.data.names import NameRefused
from services.inference.lots import (
    CSV_COLUMNS,
    decide,
    list_lots,
    lot_csv,
    lot_dir,
    lot_results,
    review,
    review_many,
    start_lot,
    thumbnail_url,
    unpack_lot_zip,
)
from services.jobs.api import get_job
from tests.synthetic import texture, write_png


@pytest.fixture
def inline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Jobs run when submitted (as in the page tests); the test's folder is the import root."""
    monkeypatch.setenv("KENSA_JOBS_INLINE", "1")
    monkeypatch.setenv("KENSA_IMPORT_ROOTS", str(tmp_path))
    return tmp_path


def _done(ctx: Kensa, job_id: int) -> dict[str, Any]:
    job = get_job(ctx, job_id)
    assert job["status"] == "done", job["error"]
    assert job["kind"] == "score_batch"
    return job["result"]


def _png_bytes(seed: int) -> bytes:
    path = write_png(Path(f"/tmp/kensa-lot-{seed}-{np.random.default_rng().integers(1 << 30)}"
                          ".png"), texture(np.random.default_rng(seed), 96))
    data = path.read_bytes()
    path.unlink()
    return data


def _zip(entries: dict[str, bytes], links: dict[str, str] | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    buffer.seek(0)
    return buffer


def test_folder_lot_is_a_job_and_resumes_by_sha256(
    ctx: Kensa, trained: dict[str, Any], project: str, dataset: Path, inline: Path,
    new_goods: Callable[[int, int], Path],
) -> None:
    folder = Path(shutil.copytree(dataset / "test", inline / "incoming"))
    first = _done(ctx, start_lot(ctx, project, "Lot 7", folder=str(folder)))
    assert first["source"] == "folder"
    assert (first["files"], first["scored"], first["skipped"]) == (6, 6, 0)

    for png in new_goods(2, 7).glob("*.png"):  # two new parts arrive; the lot is submitted again
        shutil.copy(png, folder / "good" / png.name)
    again = _done(ctx, start_lot(ctx, project, "Lot 7", folder=str(folder)))
    assert (again["files"], again["scored"], again["skipped"]) == (8, 2, 6)
    assert not again["created"]

    rows = lot_results(ctx, project, "Lot 7")
    assert len(rows) == 8 and len({r["sha256"] for r in rows}) == 8
    assert {r["folder"] for r in rows} == {"good", "spot"}  # relative to the lot, no server path
    assert all(not r["folder"].startswith("/") for r in rows)
    defects = [r for r in rows if r["verdict"] == "defect"]
    assert {r["folder"] for r in defects} == {"spot"}  # the drawn spots are found
    for r in rows:
        assert 0 <= r["normalized_score"] <= 1 and 0.5 <= r["confidence"] <= 1
        assert r["model"] == "Model 1" and r["bank_version"] == 1
        assert (r["normalized_score"] >= 0.5) == (r["verdict"] == "defect")
    assert thumbnail_url(ctx, rows[0]["image_path"]).startswith("data:image/jpeg;base64,")

    (lot,) = list_lots(ctx, project)  # the validation batch of the training is not a lot
    assert lot["name"] == "Lot 7" and lot["source"] == "folder"
    assert (lot["scored"], lot["defects"], lot["reviewed"], lot["overruled"]) == (
        8, len(defects), 0, 0)
    assert lot["good"] + lot["defects"] + lot["unsure"] == 8
    assert lot["model"] == "Model 1" and float(lot["threshold"]) == pytest.approx(
        rows[0]["threshold"], abs=1e-4)

    only = lot_results(ctx, project, "Lot 7", verdict="defect")
    assert [r["sha256"] for r in only] == [r["sha256"] for r in defects]
    high = lot_results(ctx, project, "Lot 7", score_min=0.5)
    assert {r["sha256"] for r in high} == {r["sha256"] for r in defects}
    assert len(lot_results(ctx, project, "Lot 7", score_max=0.5)) == 8 - len(defects)


def test_zip_lot_unpacks_safely_and_resumes(
    ctx: Kensa, trained: dict[str, Any], project: str, inline: Path
) -> None:
    entries = {f"lot42/line-a/p{i}.png": _png_bytes(i) for i in range(3)}
    entries["lot42/p9.png"] = _png_bytes(9)
    bad = {"lot42/../../evil.png": _png_bytes(20), "lot42/notes.txt": b"hello"}
    result = _done(ctx, start_lot(ctx, project, "zip lot", zip_file=_zip({**entries, **bad})))
    assert result["source"] == "zip" and result["unpacked"] == 4
    assert (result["scored"], result["skipped"]) == (4, 0)
    reasons = {r["name"]: r["reason"] for r in result["rejected"]}
    assert "leaves" in reasons["lot42/../../evil.png"]
    assert "not an image" in reasons["lot42/notes.txt"]
    assert not list(inline.rglob("evil.png")) and not list(ctx.home.rglob("evil.png"))
    assert not list((ctx.home / "uploads").iterdir())  # the upload's only use was this job
    target = lot_dir(ctx.home, project, "zip lot")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.png")) == [
        "line-a/p0.png", "line-a/p1.png", "line-a/p2.png", "p9.png"]  # "lot42/" dropped
    rows = lot_results(ctx, project, "zip lot")
    assert sorted((r["folder"], r["file"]) for r in rows) == [
        ("", "p9.png"), ("line-a", "p0.png"), ("line-a", "p1.png"), ("line-a", "p2.png")]
    assert list_lots(ctx, project)[0]["source"] == "zip"

    # The same zip again (a retry after a lost connection): nothing new, nothing scored twice.
    again = _done(ctx, start_lot(ctx, project, "zip lot", zip_file=_zip(entries)))
    assert (again["scored"], again["skipped"], again["unchanged"]) == (0, 4, 4)
    assert len(lot_results(ctx, project, "zip lot")) == 4


def test_unpack_refuses_traversal_links_and_absolute_names(tmp_path: Path) -> None:
    good = _png_bytes(1)
    archive = _zip({"a.png": good, "../up.png": good, "/abs.png": good, "sub/b.png": good},
                   links={"link.png": "/etc/passwd"})
    report = unpack_lot_zip(archive, tmp_path / "lot")
    reasons = {r.name: r.reason for r in report.rejected}
    assert set(reasons) == {"../up.png", "/abs.png", "link.png"}
    assert "leaves" in reasons["../up.png"] and "absolute" in reasons["/abs.png"]
    assert "link" in reasons["link.png"]
    assert sorted(report.imported) == ["a.png", "sub/b.png"]
    assert not (tmp_path / "up.png").exists() and not (tmp_path / "lot" / "link.png").exists()
    with pytest.raises(ImportRefused, match="no images"):
        unpack_lot_zip(_zip({"readme.txt": b"x"}), tmp_path / "empty")
    with pytest.raises(ImportRefused, match="not a readable zip"):
        unpack_lot_zip(io.BytesIO(b"not a zip"), tmp_path / "x")


def test_refused_before_any_job(ctx: Kensa, project: str, inline: Path) -> None:
    folder = inline / "parts"
    folder.mkdir()
    write_png(folder / "a.png", texture(np.random.default_rng(0), 96))
    with pytest.raises(LookupError, match="no trained model"):
        start_lot(ctx, project, "lot", folder=str(folder))
    with pytest.raises(ImportRefused, match="either a folder or a zip"):
        start_lot(ctx, project, "lot")
    with pytest.raises(NameRefused, match="reserved"):
        start_lot(ctx, project, "validation-m1", folder=str(folder))
    from services.jobs.api import list_jobs

    assert list_jobs(ctx, kinds=["score_batch"]) == []


def test_folder_outside_the_import_roots_is_refused(
    ctx: Kensa, trained: dict[str, Any], project: str, inline: Path, dataset: Path
) -> None:
    with pytest.raises(ImportRefused, match="no such folder under the import folders"):
        start_lot(ctx, project, "lot", folder="/etc")
    from services.jobs.api import list_jobs

    assert list_jobs(ctx, kinds=["score_batch"]) == []


def test_review_is_stored_with_who_and_when_and_exported(
    ctx: Kensa, trained: dict[str, Any], project: str, dataset: Path, inline: Path
) -> None:
    _done(ctx, start_lot(ctx, project, "L1", folder=str(dataset / "test")))
    rows = lot_results(ctx, project, "L1")
    good = next(r for r in rows if r["verdict"] == "good")
    defect = next(r for r in rows if r["verdict"] == "defect")

    before = utcnow()
    stored = review(ctx, project, "L1", good["sha256"], decide("overrule", "good"), " Ana  Ruiz ")
    assert stored["reviewed_verdict"] == "defect" and stored["reviewed_by"] == "Ana Ruiz"
    assert before - timedelta(seconds=1) <= stored["reviewed_at"] <= utcnow()
    done, skipped = review_many(ctx, project, "L1", [defect], "confirm", "Ben")
    assert (done, skipped) == (1, [])

    after = {r["sha256"]: r for r in lot_results(ctx, project, "L1")}
    assert after[good["sha256"]]["overruled"] and after[good["sha256"]]["final_verdict"] == "defect"
    assert after[defect["sha256"]]["reviewed_by"] == "Ben"
    assert not after[defect["sha256"]]["overruled"]
    assert after[good["sha256"]]["verdict"] == "good"  # the model's verdict is never changed
    reviewed = lot_results(ctx, project, "L1", reviewed=True)
    assert {r["sha256"] for r in reviewed} == {good["sha256"], defect["sha256"]}
    assert len(lot_results(ctx, project, "L1", reviewed=False)) == len(rows) - 2
    assert [r["sha256"] for r in lot_results(ctx, project, "L1", overruled=True)] == [
        good["sha256"]]
    (lot,) = list_lots(ctx, project)
    assert (lot["reviewed"], lot["overruled"]) == (2, 1)

    csv = pd.read_csv(io.BytesIO(lot_csv(ctx, project, "L1")), encoding="utf-8-sig",
                      keep_default_na=False)
    assert list(csv.columns) == list(CSV_COLUMNS) and len(csv) == len(rows)
    line = csv[csv["sha256"] == good["sha256"]].iloc[0]
    assert (line["verdict"], line["reviewed_verdict"], line["reviewed_by"]) == (
        "good", "defect", "Ana Ruiz")
    assert line["final_verdict"] == "defect" and str(line["overruled"]) == "True"
    assert line["reviewed_at"].startswith(str(stored["reviewed_at"].date()))
    assert not any(str(v).startswith(str(dataset)) for v in csv.to_numpy().ravel())

    review(ctx, project, "L1", good["sha256"], None, "Ana")  # cleared: who goes with it
    cleared = next(r for r in lot_results(ctx, project, "L1") if r["sha256"] == good["sha256"])
    assert cleared["reviewed_verdict"] is None and cleared["reviewed_by"] is None
    with pytest.raises(NameRefused):
        review(ctx, project, "L1", good["sha256"], "good", "   ")
    with pytest.raises(ValueError, match="good or defect"):
        review(ctx, project, "L1", good["sha256"], "review", "Ana")
    with pytest.raises(LookupError):
        review(ctx, project, "L1", "0" * 64, "good", "Ana")
    with pytest.raises(LookupError):
        lot_results(ctx, project, "no such lot")


def test_decide() -> None:
    assert decide("confirm", "defect") == "defect" and decide("overrule", "defect") == "good"
    assert decide("good", "review") == "good" and decide("clear", "good") is None
    with pytest.raises(ValueError, match="unsure"):
        decide("confirm", "review")
    with pytest.raises(ValueError, match="unknown"):
        decide("approve", "good")


def test_cli_lots_and_review(
    ctx: Kensa, trained: dict[str, Any], project: str, dataset: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from services import cli

    monkeypatch.setenv("KENSA_HOME", str(ctx.home))
    monkeypatch.setenv("DATABASE_URL", ctx.database_url)
    assert cli.main(["--quiet", "score", project, str(dataset / "test"), "--batch", "B1"]) == 0
    capsys.readouterr()
    sha = lot_results(ctx, project, "B1")[0]["sha256"]
    assert cli.main(["--quiet", "review", project, "--batch", "B1", "--image", sha,
                     "--verdict", "defect", "--by", "Ops"]) == 0
    assert "reviewed defect by Ops" in capsys.readouterr().out
    assert cli.main(["--quiet", "lots", project, "--json"]) == 0
    (lot,) = json.loads(capsys.readouterr().out)
    assert (lot["name"], lot["scored"], lot["reviewed"]) == ("B1", 6, 1)
    assert cli.main(["--quiet", "review", project, "--batch", "nope", "--image", sha,
                     "--verdict", "good", "--by", "Ops"]) == 2
    assert "no lot named 'nope'" in capsys.readouterr().err

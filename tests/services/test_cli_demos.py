"""The configured CLI runs: advanced-train, multi-task-train, train-all, adaptive-inference."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import db.repositories as repo
from services import cli
from services.context import Kensa
from services.history.adaptation import versions
from services.jobs.api import list_jobs, run_inline
from tests.synthetic import texture, with_defect, write_png

#: Small and fast, as the other service tests (tests/services/conftest.py).
FAST = "model:\n  params: {image_size: 96, max_bank: 10000}\n"


@pytest.fixture
def cli_env(ctx: Kensa, monkeypatch: pytest.MonkeyPatch) -> Kensa:
    monkeypatch.setenv("KENSA_HOME", str(ctx.home))
    monkeypatch.setenv("DATABASE_URL", ctx.database_url)
    return ctx


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["advanced-train", "multi-task-train", "train-all",
                                     "adaptive-inference", "explain"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out
    if command == "explain":
        assert "Reads no key of default_config.yaml" in " ".join(out.split())


# --------------------------------------------------------------------------- file runs


def test_advanced_train_writes_a_run_that_score_uses(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "cfg.yaml", FAST + "data: {shots: 4}\n"
                   "augmentation: {transforms: [{name: HorizontalFlip, p: 1.0}], copies: 1}\n"
                   "post_processing: {threshold: {method: mean_k_sigma, k: 2.5}}\n")
    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "advanced-train", "--config", str(config), "--data",
                       str(dataset), "--out", str(run_dir), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["threshold"]["method"] == "mean_k_sigma"
    assert summary["threshold"]["params"]["k"] == 2.5
    assert summary["shots"] == 4 and summary["images"] == 12
    assert summary["augmentation"] == {"preset": "config file", "copies": 1,
                                       "augmented_images": 4}
    assert summary["metrics"]["image_auroc"] > 0.9 and "f1_at_threshold" in summary["metrics"]
    assert summary["params"]["image_size"] == 96
    assert (run_dir / "config.yaml").is_file() and len(list((run_dir / "augmented").iterdir()))
    code, out, _ = run(capsys, "score", "--run", str(run_dir), str(dataset / "test"), "--json")
    assert code == 0
    scored = json.loads(out)
    assert scored["threshold"] == pytest.approx(summary["threshold"]["value"])
    verdicts = {Path(p["path"]).parent.name: p["verdict"] for p in scored["predictions"]}
    assert len(scored["predictions"]) == 6 and verdicts["spot"] == "defect"


def test_a_bad_config_lists_every_problem_and_exits_2(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "bad.yaml", "modle: {}\ndata: {shots: zero}\n"
                   "model: {name: kensa_patchcor}\n"
                   "post_processing: {threshold: {q: 101}}\n")
    code, out, err = run(capsys, "advanced-train", "--config", str(config), "--data",
                         str(dataset), "--out", str(tmp_path / "run"))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 4 and all(line.startswith(f"error: {config}: ") for line in lines)
    assert "modle: unknown key; did you mean 'model'?" in err
    assert "data.shots: expected a whole number or null, got 'zero' (text)" in err
    assert "model.name: unknown model 'kensa_patchcor'; did you mean 'kensa_patchcore'?" in err
    assert "post_processing.threshold.q: 101 is out of range: must be between 0 and 100" in err
    assert not (tmp_path / "run").exists()
    code, _, err = run(capsys, "advanced-train", "--config", str(tmp_path / "none.yaml"))
    assert code == 2 and err == f"error: {tmp_path / 'none.yaml'}: no such config file\n"
    code, _, err = run(capsys, "advanced-train")  # no folder anywhere
    assert code == 2 and "data.path: no dataset folder; give --data DIR" in err


def test_multi_task_train_runs_the_others_when_one_fails(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = write(tmp_path / "tasks.yaml", f"""
defaults:
  model: {{params: {{image_size: 96, max_bank: 10000}}}}
  data: {{shots: 3}}
tasks:
  - name: broken
    data: missing-folder
  - name: widgets
    data: {dataset}
    post_processing: {{threshold: {{method: percentile, q: 99}}}}
""")
    out_root = tmp_path / "runs"
    code, out, err = run(capsys, "multi-task-train", "--config", str(tasks), "--out",
                         str(out_root), "--json")
    assert code == 1
    result = json.loads(out)
    broken, widgets = result["tasks"]
    assert broken["status"] == "failed" and "missing-folder: folder not found" in broken["error"]
    assert f"error: task broken: {tmp_path / 'missing-folder'}: folder not found" in err
    assert widgets["status"] == "done" and widgets["images"] == 12
    assert widgets["threshold_method"] == "percentile" and widgets["image_auroc"] > 0.9
    assert result["failed"] == 1
    assert (out_root / "widgets" / "run.json").is_file()
    assert not (out_root / "broken").exists()
    # the table, in words
    code, out, _ = run(capsys, "multi-task-train", "--config", str(tasks), "--out",
                       str(out_root))
    header, first, second = out.splitlines()[:3]
    assert header.split() == ["task", "images", "AUROC", "F1", "threshold", "seconds",
                              "status"]
    assert first.startswith("broken") and "FAILED:" in first
    assert second.startswith("widgets") and second.rstrip().endswith("done")


def test_multi_task_train_checks_every_task_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = write(tmp_path / "tasks.yaml", "tasks:\n  - name: a\n    data: x\n"
                  "    augmentation: {preset: shiny}\n  - name: b\n")
    code, out, err = run(capsys, "multi-task-train", "--config", str(tasks), "--out",
                         str(tmp_path / "runs"))
    assert code == 2 and out == ""
    assert f"error: {tasks}: tasks[0].augmentation.preset: file runs have no presets" in err
    assert "data.path: no dataset folder" in err  # task b
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- train-all


@pytest.fixture
def thread_worker(ctx: Kensa) -> Iterator[None]:
    """A worker in a thread of the test process: takes queued jobs and runs them, like
    ``python -m services.jobs.worker`` would, without a second interpreter's start-up."""
    stop = threading.Event()

    def work() -> None:
        mine = Kensa.create(ctx.home, ctx.database_url, migrate=False)
        try:
            while not stop.is_set():
                for job in list_jobs(mine, active=True, reap=False):
                    if job["status"] == "queued":
                        with contextlib.suppress(Exception):  # the row says how it ended
                            run_inline(mine, job["id"])
                stop.wait(0.2)
        finally:
            mine.close()

    thread = threading.Thread(target=work, name="test-worker", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


def test_train_all_queues_one_job_per_project(
    cli_env: Kensa, make_project: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project("widgets", n_train=6, n_test_good=3, n_defect=3, size=96)
    make_project("gears", n_train=6, n_test_good=3, n_defect=0, size=96, seed=1)
    config = write(tmp_path / "fast.yaml", FAST)
    code, out, _ = run(capsys, "train-all", "--config", str(config), "--shots", "3", "--json")
    assert code == 0
    result = json.loads(out)
    assert sorted(q["project"] for q in result["queued"]) == ["gears", "widgets"]
    assert result["failed"] == []
    jobs = list_jobs(cli_env, kinds=["train"])
    assert sorted(j["id"] for j in jobs) == sorted(q["job_id"] for q in result["queued"])
    assert all(j["status"] == "queued" for j in jobs)
    with cli_env.session(readonly=True) as s:
        for q in result["queued"]:
            mv = repo.get_model_version(s, q["model_version_id"])
            assert mv.params["shots"] == 3 and mv.params["model"]["image_size"] == 96
            assert mv.status == "queued"
            job = next(j for j in jobs if j["id"] == q["job_id"])
            assert job["payload"] == {"model_version_id": q["model_version_id"]}


def test_train_all_refuses_what_a_project_run_cannot_do(
    cli_env: Kensa, make_project: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_project("widgets", n_train=6, n_test_good=3, n_defect=3, size=96)
    config = write(tmp_path / "c.yaml", FAST + "post_processing: {threshold: {method: "
                   "percentile}}\n")
    code, _, err = run(capsys, "train-all", "--config", str(config))
    assert code == 2 and f"error: {config}: post_processing.threshold.method: project runs " \
        "set the threshold automatically" in err
    code, _, err = run(capsys, "train-all", "--model", "kensa_patchcor")
    assert code == 2 and "command line: model.name: unknown model 'kensa_patchcor'" in err
    assert list_jobs(cli_env) == []


def test_train_all_tasks_imports_folders_and_waits_for_the_jobs(
    cli_env: Kensa, make_project: Any, dataset: Path, tmp_path: Path, thread_worker: None,
    capsys: pytest.CaptureFixture[str]
) -> None:
    make_project("gears", n_train=6, n_test_good=3, n_defect=3, size=96, seed=1)
    tasks = write(tmp_path / "tasks.yaml", f"""
defaults:
  model: {{params: {{image_size: 96, max_bank: 10000}}}}
  data: {{shots: 3}}
tasks:
  - name: gears
  - name: tiles
    data: {dataset}
  - name: ghost
""")
    code, out, err = run(capsys, "train-all", "--tasks", str(tasks), "--wait", "--timeout",
                         "120", "--json")
    assert code == 1, err  # ghost: no such project, the others trained
    result = json.loads(out)
    assert [q["project"] for q in result["queued"]] == ["gears", "tiles"]
    (ghost,) = result["failed"]
    assert ghost["project"] == "ghost" and ghost["error"].startswith("no project named 'ghost'")
    assert "imported 12 images into 'tiles' (12 new)" in err
    assert [j["status"] for j in result["jobs"]] == ["done", "done"], result["jobs"]
    for job in result["jobs"]:
        assert job["result"]["status"] == "done" and job["result"]["threshold"] > 0
    with cli_env.session(readonly=True) as s:
        assert sorted(p.name for p in repo.list_projects(s)) == ["gears", "tiles"]


# --------------------------------------------------------------------------- adaptation


def _defects(folder: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_png(folder / f"bad_{i:02d}.png", with_defect(rng, texture(rng, 96))[0])
    return folder


def test_adaptive_inference_adapts_only_from_confident_normals(
    cli_env: Kensa, project: str, trained: dict[str, Any], new_goods: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    # defects: scored, reported, nothing learned
    code, out, _ = run(capsys, "adaptive-inference", "--project", project, "--images",
                       str(_defects(tmp_path / "bad", 10, seed=5)), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["scored"] == 10 and result["adaptation"]["adapted"] is False
    assert sum(p["verdict"] == "defect" for p in result["predictions"]) >= 9
    assert [v["version"] for v in versions(cli_env, project)] == [1]

    goods = str(new_goods(16, seed=31))
    code, out, _ = run(capsys, "adaptive-inference", "--project", project, "--images", goods,
                       "--lot", "lot a", "--dry-run")
    assert code == 0 and "would adapt: 1 chunk(s) of 8 images" in out
    assert "learns (chunk 1)" in out
    assert [v["version"] for v in versions(cli_env, project)] == [1]

    code, out, _ = run(capsys, "adaptive-inference", "--project", project, "--images", goods,
                       "--lot", "lot a", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["scored"] == 0 and result["skipped"] == 16  # the lot goes on
    adaptation = result["adaptation"]
    assert adaptation["adapted"] is True and adaptation["versions"] == [2]
    assert adaptation["threshold"]["method"] == "running_mean_3sigma"
    rows = versions(cli_env, project)
    assert [(r["version"], r["kind"], r["parent"], r["active"]) for r in rows] == [
        (1, "initial", None, False), (2, "online", 1, True)]
    assert rows[1]["images_added"] == 8

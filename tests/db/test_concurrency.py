"""Real processes writing to the same database at the same time (the app + a worker + CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

import db.repositories as repo
from db.migrate import current_revision, head_revision, upgrade
from db.models import Prediction
from db.session import make_engine, session_scope

ROOT = Path(__file__).resolve().parents[2]


def run_together(argv_list: list[list[str]], tmp_path: Path, timeout: float = 120) -> list[dict]:
    """Start one child per argv, release them at once, return their JSON results."""
    go = tmp_path / "go"
    procs, ready = [], []
    for i, argv in enumerate(argv_list):
        ready.append(tmp_path / f"ready{i}")
        cmd = [sys.executable, "-m", "tests.db.proc", *argv, "--ready", str(ready[i])]
        procs.append(
            subprocess.Popen(
                [*cmd, "--go", str(go)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout
    while not all(r.exists() for r in ready):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "children never got ready"
        time.sleep(0.005)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _overlapped(results: list[dict]) -> bool:
    return max(r["first_commit"] for r in results) < min(r["last_commit"] for r in results)


def test_two_processes_write_predictions_concurrently(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        project = repo.create_project(s, "p", "/p")
        mv = repo.create_model_version(s, project.id, "patchcore")
        repo.start_model_version(s, mv.id)
        bank = repo.add_state_version(
            s, mv.id, kind="initial", state_format="kensa_patchcore", directory=None, files={},
            vector_count=1, dim=1,
        )
        batches = [repo.create_batch(s, project.id, f"b{i}").id for i in range(2)]
    n = 200
    results = run_together(
        [
            ["write", "--url", db_url, "--batch", str(b), "--model-version", str(mv.id)]
            + ["--bank", str(bank.id), "-n", str(n), "--peers", "2"]
            for b in batches
        ],
        tmp_path,
    )
    assert _overlapped(results), results  # the writers really ran at the same time
    with session_scope(engine, readonly=True) as s:
        assert s.scalar(select(func.count(Prediction.id))) == 2 * n
        for b in batches:
            assert len(repo.scored_shas(s, b)) == n
        assert repo.get_model_version(s, mv.id).status == "running"  # type: ignore[union-attr]
    engine.dispose()


def test_two_processes_upgrade_a_fresh_database_at_once(db_url: str, tmp_path: Path) -> None:
    results = run_together([["upgrade", "--url", db_url], ["upgrade", "--url", db_url]], tmp_path)
    assert len(results) == 2
    assert current_revision(db_url) == head_revision()
    engine = make_engine(db_url)
    with session_scope(engine) as s:  # the schema is whole and usable
        repo.create_project(s, "after", "/a")
    engine.dispose()

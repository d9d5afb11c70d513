"""Two real processes scoring different batches into ONE SQLite database at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import db.repositories as repo
from services.context import Kensa
from services.data.projects import create_project
from services.training.project import train_project
from tests.services.conftest import PARAMS, SHOTS
from tests.synthetic import texture, write_png

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 24


def test_two_scoring_processes_lose_nothing_and_never_see_locked(
    tmp_path: Path, dataset: Path
) -> None:
    ctx = Kensa.create(tmp_path / "home")  # the default: SQLite under KENSA_HOME
    create_project(ctx, "w", dataset)
    train_project(ctx, "w", shots=SHOTS, params=PARAMS)
    folders = []
    for b in range(2):
        rng = np.random.default_rng(1000 + b)
        folder = tmp_path / f"incoming{b}"
        for i in range(N_IMAGES):
            write_png(folder / f"img_{i:03d}.png", texture(rng, 96))
        folders.append(folder)

    go = tmp_path / "go"
    procs, ready = [], []
    for b, folder in enumerate(folders):
        ready.append(tmp_path / f"ready{b}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.services.proc", "w", str(folder), f"batch-{b}",
             "--ready", str(ready[b]), "--go", str(go), "--chunk", "4"],
            cwd=ROOT, env=ctx.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    deadline = time.monotonic() + 180
    while not all(r.exists() for r in ready):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "children never got ready"
        time.sleep(0.01)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
        assert json.loads(out.strip().splitlines()[-1]) == {"scored": N_IMAGES, "problems": []}

    spans = []
    with ctx.session(readonly=True) as s:
        for b in range(2):
            batch = repo.get_batch_by_name(s, 1, f"batch-{b}")
            preds = repo.list_predictions(s, batch.id)
            assert len(preds) == N_IMAGES
            assert len(set(p.image_sha256 for p in preds)) == N_IMAGES
            spans.append((min(p.created_at for p in preds), max(p.created_at for p in preds)))
    # the two writers really ran at the same time (6 commits each, interleaved)
    assert max(a for a, _ in spans) < min(b for _, b in spans), spans
    ctx.close()

"""Colour "decided from the good images": every good image of the project, not only the shots.

One red shot alone cannot say whether colour matters; held-out good images in another colour
can, and a training must read them (they still stay out of the bank).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import db.repositories as repo
from services import cli
from services.context import Kensa
from services.data.projects import create_project
from services.training.project import get_model_version
from tests.synthetic import coloured_part, write_png

RED, BLUE = 0, 110


def parts(root: Path, test_hue: int) -> Path:
    """One red part to learn from, two good test parts in ``test_hue``, two scratched red."""
    rng = np.random.default_rng(5)
    write_png(root / "train" / "good" / "good_000.png", coloured_part(rng, RED))
    for i in range(2):
        write_png(root / "test" / "good" / f"good_{i:03d}.png", coloured_part(rng, test_hue))
        scratched = coloured_part(rng, RED)
        scratched[45:48, 30:66] = 255
        mask = np.zeros(scratched.shape[:2], np.uint8)
        mask[45:48, 30:66] = 255
        write_png(root / "test" / "scratch" / f"scratch_{i:03d}.png", scratched)
        write_png(root / "ground_truth" / "scratch" / f"scratch_{i:03d}_mask.png", mask)
    return root


@pytest.mark.parametrize(("test_hue", "ignored"), [(BLUE, True), (RED, False)])
def test_held_out_goods_decide_whether_colour_matters(
        ctx: Kensa, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], test_hue: int, ignored: bool) -> None:
    monkeypatch.setenv("KENSA_HOME", str(ctx.home))
    monkeypatch.setenv("DATABASE_URL", ctx.database_url)
    create_project(ctx, "heads", parts(tmp_path / "heads", test_hue))
    assert cli.main(["--quiet", "train", "heads", "--shots", "1", "--seed", "0",
                     "--set", "image_size=96"]) == 0
    out = capsys.readouterr().out
    assert "model version 1 done" in out and ("colour ignored" in out) is ignored
    mv = get_model_version(ctx, 1)
    assert bool(mv["metrics"].get("colour_ignored")) is ignored
    with ctx.session(readonly=True) as s:
        (bank,) = repo.list_state_versions(s, mv["id"])
    assert len(bank.source_images) == 1  # the held-out goods only informed the decision

"""services.context: a context from the environment, with the schema at head and its paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.migrate import current_revision, head_revision
from services.context import Kensa


def test_context_from_environment_upgrades_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KENSA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    ctx = Kensa.create()
    try:
        assert ctx.home == (tmp_path / "home").resolve()
        assert ctx.database_url == f"sqlite:///{ctx.home / 'kensa.db'}"
        assert current_revision(ctx.database_url) == head_revision()
        env = ctx.env()
        assert env["KENSA_HOME"] == str(ctx.home) and env["DATABASE_URL"] == ctx.database_url
    finally:
        ctx.close()


def test_artifact_paths_are_stored_relative_to_home(tmp_path: Path) -> None:
    ctx = Kensa.create(tmp_path / "home")
    try:
        model_dir = ctx.model_dir(3, 7)
        assert model_dir == ctx.home / "projects" / "3" / "models" / "7"
        assert ctx.heatmap_path(3, 9, "ab" * 32) == (
            ctx.home / "projects" / "3" / "heatmaps" / "9" / f"{'ab' * 32}.png"
        )
        bank_a, bank_b = ctx.new_bank_file(3, 7), ctx.new_bank_file(3, 7)
        assert bank_a != bank_b and bank_a.parent == model_dir / "banks"
        stored = ctx.stored(model_dir / "bank.safetensors")
        assert stored == "projects/3/models/7/bank.safetensors"
        assert ctx.resolve(stored) == model_dir / "bank.safetensors"
        outside = tmp_path / "elsewhere.png"
        assert ctx.stored(outside) == str(outside.resolve())
        assert ctx.resolve(str(outside)) == outside
    finally:
        ctx.close()

"""Augmentation presets in the database: one row per name, at most one for training, and the
0007 migration that got there from a database holding duplicate names."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

import db.repositories as repo
from db.migrate import downgrade, upgrade
from db.session import make_engine, session_scope


@pytest.fixture
def project_id(engine: Engine) -> int:
    with session_scope(engine) as s:
        return repo.create_project(s, "bottle", "/data/bottle").id


def test_save_overwrites_by_name(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        first = repo.save_preset(s, project_id, "light", {"brightness": 0.1})
        first_id, created = first.id, first.created_at
        repo.save_preset(s, project_id, "dark", {"brightness": -0.1})
    with session_scope(engine) as s:
        again = repo.save_preset(s, project_id, "light", {"brightness": 0.3})
        assert again.id == first_id and again.config == {"brightness": 0.3}
        assert again.created_at == created and again.updated_at >= created
    with session_scope(engine, readonly=True) as s:
        presets = repo.list_presets(s, project_id)
        assert [(p.name, p.config["brightness"]) for p in presets] == [("dark", -0.1),
                                                                      ("light", 0.3)]
        assert repo.get_preset_by_name(s, project_id, "light").id == first_id  # type: ignore[union-attr]
        assert repo.get_preset_by_name(s, project_id, "nope") is None
        assert not any(p.for_training for p in presets)


def test_rename_and_delete(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        repo.save_preset(s, project_id, "a", {"x": 1})
        repo.save_preset(s, project_id, "b", {"x": 2})
    with pytest.raises(repo.PresetNameTaken, match="'b'"), session_scope(engine) as s:
        repo.rename_preset(s, project_id, "a", "b")
    with pytest.raises(LookupError, match="'zz'"), session_scope(engine) as s:
        repo.rename_preset(s, project_id, "zz", "c")
    with session_scope(engine) as s:
        assert repo.rename_preset(s, project_id, "a", "c").name == "c"
    with session_scope(engine) as s:
        assert [p.name for p in repo.list_presets(s, project_id)] == ["b", "c"]
        assert repo.delete_preset(s, project_id, "b") is True
        assert repo.delete_preset(s, project_id, "b") is False
    with session_scope(engine, readonly=True) as s:
        assert [(p.name, p.config) for p in repo.list_presets(s, project_id)] == [("c", {"x": 1})]


def test_one_preset_for_training(engine: Engine, project_id: int) -> None:
    with session_scope(engine) as s:
        other = repo.create_project(s, "cans", "/data/cans").id
        for name in ("a", "b"):
            repo.save_preset(s, project_id, name, {})
        repo.save_preset(s, other, "a", {})
        repo.set_training_preset(s, other, "a")
    with session_scope(engine) as s:
        repo.set_training_preset(s, project_id, "a")
        repo.set_training_preset(s, project_id, "b")
        assert repo.training_preset(s, project_id).name == "b"  # type: ignore[union-attr]
        assert [p.for_training for p in repo.list_presets(s, project_id)] == [False, True]
        repo.save_preset(s, project_id, "b", {"y": 1})  # overwriting keeps the mark
        assert repo.training_preset(s, project_id).config == {"y": 1}  # type: ignore[union-attr]
    with pytest.raises(LookupError, match="'nope'"), session_scope(engine) as s:
        repo.set_training_preset(s, project_id, "nope")
    with session_scope(engine) as s:
        assert repo.training_preset(s, project_id).name == "b"  # type: ignore[union-attr]
        repo.set_training_preset(s, project_id, None)
        assert repo.training_preset(s, project_id) is None
        assert repo.training_preset(s, other).name == "a"  # type: ignore[union-attr]


def test_database_refuses_a_second_training_preset_and_a_duplicate_name(
    engine: Engine, project_id: int
) -> None:
    with session_scope(engine) as s:
        repo.save_preset(s, project_id, "a", {})
        repo.save_preset(s, project_id, "b", {})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE augmentation_presets SET for_training = :t"), {"t": True})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE augmentation_presets SET name = 'a'"))


def test_0007_keeps_the_newest_preset_of_each_name(db_url: str) -> None:
    upgrade(db_url, "0006_review_by")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO projects (id, name, data_root, settings)"
                          " VALUES (1, 'p', '/d', '{}'), (2, 'q', '/e', '{}')"))
        conn.execute(text(
            "INSERT INTO augmentation_presets (id, project_id, name, config) VALUES"
            " (1, 1, 'light', '{\"v\": 1}'), (2, 1, 'light', '{\"v\": 2}'),"
            " (3, 1, 'dark', '{\"v\": 3}'), (4, 2, 'light', '{\"v\": 4}'),"
            " (5, 1, 'light', '{\"v\": 5}'), (6, 1, 'dark', '{\"v\": 6}')"))
    engine.dispose()

    upgrade(db_url)

    engine = make_engine(db_url)
    with session_scope(engine) as s:
        rows = [(p.id, p.name, p.config, p.for_training, p.updated_at == p.created_at)
                for p in [*repo.list_presets(s, 1), *repo.list_presets(s, 2)]]
        assert rows == [(6, "dark", {"v": 6}, False, True), (5, "light", {"v": 5}, False, True),
                        (4, "light", {"v": 4}, False, True)]
        repo.set_training_preset(s, 1, "dark")
        assert repo.training_preset(s, 1).id == 6  # type: ignore[union-attr]
    engine.dispose()

    downgrade(db_url, "0006_review_by")
    engine = make_engine(db_url)
    columns = {c["name"] for c in inspect(engine).get_columns("augmentation_presets")}
    assert columns == {"id", "project_id", "name", "config", "created_at"}
    assert "ix_augmentation_presets_project_id" in {
        i["name"] for i in inspect(engine).get_indexes("augmentation_presets")}
    with engine.begin() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM augmentation_presets")).scalar() == 3
        conn.execute(text("INSERT INTO augmentation_presets (project_id, name, config)"
                          " VALUES (1, 'dark', '{}')"))  # duplicates allowed again
    engine.dispose()

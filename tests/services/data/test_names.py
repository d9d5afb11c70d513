"""services.data.names: one stored form per visible name, clear refusals."""

from __future__ import annotations

import pytest

from services.data.names import MAX_NAME_LENGTH, NameRefused, clean_name


def test_look_alike_names_become_the_same_name() -> None:
    composed = "Pr\u00fcfteil A"  # ü as one code point
    decomposed = "Pru\u0308fteil  A "  # u + combining diaeresis, double and trailing space
    assert clean_name(decomposed) == clean_name(composed) == composed


@pytest.mark.parametrize("bad", ["line\u200b1", "line\u202e1", "tab\x00", "bell\x07name"])
def test_invisible_and_control_characters_are_refused_by_code_point(bad: str) -> None:
    with pytest.raises(NameRefused, match=r"U\+[0-9A-F]{4}"):
        clean_name(bad)


def test_empty_and_too_long_names_are_refused_with_the_limit() -> None:
    with pytest.raises(NameRefused, match="needs a name"):
        clean_name(" \t ")
    with pytest.raises(NameRefused, match=str(MAX_NAME_LENGTH)):
        clean_name("x" * (MAX_NAME_LENGTH + 1), what="batch")
    assert clean_name("x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH


def test_a_project_is_found_by_any_normal_form_of_its_name(ctx, dataset) -> None:
    from services.data.projects import create_project, project_status

    create_project(ctx, "Pr\u00fcfteil", dataset)
    assert project_status(ctx, "Pru\u0308fteil")["project"]["name"] == "Pr\u00fcfteil"


def test_two_creates_racing_for_one_name_end_in_one_project(ctx, dataset, monkeypatch) -> None:
    """The loser of the race (its look-up saw no project) re-imports instead of crashing."""
    import db.repositories as repo
    from services.data.projects import create_project, list_projects

    create_project(ctx, "line", dataset)
    real = repo.get_project_by_name
    calls = {"n": 0}

    def stale_first_lookup(session, name):
        calls["n"] += 1
        return None if calls["n"] == 1 else real(session, name)

    monkeypatch.setattr(repo, "get_project_by_name", stale_first_lookup)
    report = create_project(ctx, "line", dataset)
    assert calls["n"] == 2 and not report.created and report.added == 0
    assert [p["name"] for p in list_projects(ctx)] == ["line"]

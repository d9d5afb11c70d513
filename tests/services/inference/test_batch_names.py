"""Issue 8, access: batch names follow the project-name rule (services.data.names).

A batch name is shown on pages and in the CLI, so look-alikes (another Unicode form, a
zero-width space) must not make two batches, and an over-long name is refused in words on
SQLite and PostgreSQL alike, before anything is scored.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from services.context import Kensa
from services.data.names import MAX_NAME_LENGTH
from services.inference.batches import batch_predictions, list_batches, score_batch


def test_batch_names_are_cleaned_and_refused_in_words(
    ctx: Kensa, trained: dict[str, Any], project: str, dataset: Path
) -> None:
    composed = "Linie 3 · Prüfung"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    first = score_batch(ctx, project, dataset / "test" / "good", f"  {decomposed}  ")
    again = score_batch(ctx, project, dataset / "test" / "good", composed)
    assert first.name == again.name == composed and not again.created  # one batch, not two
    assert len(batch_predictions(ctx, project, decomposed)) == first.scored
    before = list_batches(ctx, project)
    for bad, words in (("a\u200bb", "invisible or control characters (U+200B)"),
                       ("x" * (MAX_NAME_LENGTH + 1), f"use at most {MAX_NAME_LENGTH}"),
                       ("   ", "a batch needs a name")):
        with pytest.raises(ValueError, match=re.escape(words)):
            score_batch(ctx, project, dataset / "test" / "good", bad)
    assert list_batches(ctx, project) == before

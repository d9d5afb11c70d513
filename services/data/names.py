"""Names a person types (projects, batches, presets): one cleaning rule, the same on every database.

Names are shown in the app, in file names and in the CLI, so two that look the same must be the
same: text is normalised to Unicode NFC, runs of white space become one space, and control and
invisible format characters (zero-width space, bidi overrides) are refused rather than dropped,
so what was stored is exactly what was typed. SQLite does not enforce a column length and
PostgreSQL raises a driver error past it; checking here gives one clear message on both.
"""

from __future__ import annotations

import re
import unicodedata

#: Longest name in characters; below every name column's length in ``db.models``.
MAX_NAME_LENGTH = 100


class NameRefused(ValueError):
    """A name that cannot be used; the message says why in plain words."""


def lookup_name(text: str) -> str:
    """The stored form to look ``text`` up by, so a name typed in another normal form matches."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", str(text))).strip()


def clean_name(text: str, what: str = "project") -> str:
    """``text`` as it will be stored, or :class:`NameRefused` saying what to change."""
    name = lookup_name(text)
    if not name:
        raise NameRefused(f"a {what} needs a name")
    hidden = sorted({f"U+{ord(ch):04X}" for ch in name
                     if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}})
    if hidden:
        raise NameRefused(
            f"the {what} name contains invisible or control characters ({', '.join(hidden)}); "
            "type it again without them"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise NameRefused(
            f"the {what} name is {len(name)} characters long; use at most {MAX_NAME_LENGTH}"
        )
    return name

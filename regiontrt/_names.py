"""Region names and override reasons: one spelling, no look-alikes, no invisible text.

A region's name decides what it forbids (``EU`` forbids int8) and names served models
(``<model>_EU``); an override reason is the only record of why a preset was loosened. Both come
from TOML files, headers and HTTP-facing names, so both are normalised the same way everywhere:

* **names**: Unicode NFKC, outer whitespace stripped, then ASCII letters and digits with inner
  ``.``, ``_`` or ``-`` (at most 64 characters). Control, zero-width and combining characters are
  refused, not dropped: ``"EU\\u200b"`` is an error, never a region that forbids nothing.
  Two names are the same region when their :func:`region_key` (case and separators ignored) is
  the same, so ``EU_``-style look-alikes of a preset cannot exist and ``e-u`` *is* ``EU``.
* **reasons**: NFKC, no control, format (zero-width), private-use, unassigned or blank-looking
  characters, and at least :data:`MIN_REASON_WORDS` words of two or more letters or digits.
"""

from __future__ import annotations

import re
import unicodedata

#: The strict charset of a (normalised) region name.
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?\Z")
#: How many words an override reason needs ("approved" alone says nothing).
MIN_REASON_WORDS = 3
_WORD = re.compile(r"[^\W_]{2,}")
# Categories that render as nothing or can hide text: controls, format characters (zero-width
# space, joiners, bidi overrides), surrogates, private use, unassigned.
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Co", "Cn"))
# Symbols that render blank although Unicode files them as symbols or letters.
_BLANK = frozenset("\u2800\u3164\uffa0\u115f\u1160")


def _hidden(text: str) -> str | None:
    for ch in text:
        if ch in _BLANK or (unicodedata.category(ch) in _HIDDEN and ch not in "\t\n"):
            return f"U+{ord(ch):04X}"
    return None


def normalize_region_name(name: object) -> str:
    """The one spelling of a region name.

    Raises:
        ValueError: not a string, or not a name once normalised (the message says why).
    """
    if not isinstance(name, str):
        raise ValueError(f"a region name must be a string, got {type(name).__name__}")
    text = unicodedata.normalize("NFKC", name).strip()
    bad = _hidden(text)
    if bad is not None:
        raise ValueError(f"region name {name!r} holds an invisible or control character ({bad})")
    if not NAME_RE.match(text):
        raise ValueError(
            f"region name {name!r} must be 1-64 ASCII letters or digits, with '.', '_' or '-' "
            "only between them"
        )
    return text


def region_key(name: str) -> str:
    """What identifies a region: its normalised name, upper case, without separators."""
    return re.sub(r"[._-]", "", normalize_region_name(name)).upper()


def reason_problem(reason: object) -> str | None:
    """Why ``reason`` is not an acceptable override reason, or ``None`` when it is."""
    if not isinstance(reason, str):
        return f"must be a string, got {type(reason).__name__}"
    text = unicodedata.normalize("NFKC", reason)
    bad = _hidden(text)
    if bad is not None:
        return f"holds an invisible or control character ({bad})"
    if len(_WORD.findall(text)) < MIN_REASON_WORDS:
        return (f"must say why in at least {MIN_REASON_WORDS} words (e.g. \"customer contract "
                f"2026-17 allows int8\"), got {reason!r:.80}")
    return None


def normalize_reason(reason: str) -> str:
    """A reason as recorded: NFKC, whitespace collapsed (check :func:`reason_problem` first)."""
    return " ".join(unicodedata.normalize("NFKC", reason).split())

# ruff: noqa: RUF001, RUF002  (this module is about look-alike letters)
"""Display names: one canonical form, and a look-alike key to refuse impostors.

A name is shown to everyone in a meeting, so two names that *look* the same must not both
be present: ``аlice`` (Cyrillic а) next to ``alice``, or fullwidth ``ａｌｉｃｅ``. Names are
NFKC-normalised (this folds fullwidth and other compatibility forms, and NBSP to a space),
and compared by :func:`skeleton`: case-folded, stripped of spaces and invisible characters,
with the common Cyrillic and Greek look-alikes of Latin letters and digits mapped to them.

What is covered (documented in docs/security.md): NFKC compatibility forms, case, every
space and format character, the Hangul and Braille blanks, and the Cyrillic/Greek letters
in :data:`_LOOKALIKES`. Not covered: the full Unicode confusables table (e.g. Armenian or
Cherokee look-alikes, mathematical letters NFKC leaves alone are few), and look-alikes
within Latin itself (``rn`` against ``m``, ``l`` against ``I``).
"""

from __future__ import annotations

import unicodedata

#: Characters that draw nothing although Unicode does not class them as spaces or format
#: characters: Hangul fillers, the blank Braille pattern, and a few other known blanks.
_BLANKS = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800\u180e\u2028\u2029\u00ad\u034f\u17b4\u17b5"
    "\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d\u206e\u206f\ufeff\u1cbc"
)

# Lower-case look-alikes (the skeleton is case-folded first): Cyrillic, then Greek.
_LOOKALIKES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j",
        "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
        "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ɡ": "g", "ӏ": "l", "ο": "o",
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ϲ": "c", "ϳ": "j", "μ": "u", "з": "3",
        "ч": "4", "б": "6", "ω": "w", "ѵ": "v", "ԍ": "g", "ɑ": "a",
    }
)


class InvalidName(ValueError):
    """A display name that cannot be used; the message says why."""


def is_invisible(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] in "ZC" or category in ("Mn", "Me") or ch in _BLANKS


def clean_name(name: str) -> str:
    """The name as it will be shown, or :class:`InvalidName` saying what is wrong."""
    name = unicodedata.normalize("NFKC", name).strip()
    if any(unicodedata.category(ch)[0] == "C" or ch in _BLANKS for ch in name):
        raise InvalidName("a display name cannot contain control, format or blank characters")
    if not any(not is_invisible(ch) for ch in name):
        raise InvalidName("a display name needs visible characters")
    return name


def skeleton(name: str) -> str:
    """The key two names share when they look alike (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    visible = "".join(ch for ch in folded if not is_invisible(ch))
    return unicodedata.normalize("NFKC", visible.translate(_LOOKALIKES))

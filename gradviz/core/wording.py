"""Small helpers that keep messages grammatical: counts with the right noun, verbs that agree.

Messages are built from counts and lists whose length is known only at run time;
"1 operations" or "E get only ..." is what a bare f-string gives.
"""

from __future__ import annotations

from typing import Sequence


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``count`` and the noun in the matching number.

    Example:
        >>> plural(1, "layer"), plural(3, "layer"), plural(0, "loss", "losses")
        ('1 layer', '3 layers', '0 losses')
    """
    noun = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {noun}"


def noun(count: int, singular: str, plural_form: str | None = None) -> str:
    """The noun alone, in the number ``count`` asks for.

    Example:
        >>> noun(1, "layer"), noun(2, "layer"), noun(2, "operation or weightless layer",
        ...                                            "operations and weightless layers")
        ('layer', 'layers', 'operations and weightless layers')
    """
    return singular if count == 1 else (plural_form or singular + "s")


def verb(subjects: int | Sequence[object], singular: str, plural_form: str) -> str:
    """The verb form agreeing with ``subjects`` (a count or a list of them).

    Example:
        >>> verb(["E"], "gets", "get"), verb(["E", "F"], "gets", "get"), verb(1, "is", "are")
        ('gets', 'get', 'is')
    """
    count = subjects if isinstance(subjects, int) else len(subjects)
    return singular if count == 1 else plural_form

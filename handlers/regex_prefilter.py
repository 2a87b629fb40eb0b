"""A leading character check for big alternations of cues.

Python's `re` tries every branch of an alternation at every position of the text. A pattern of
hundreds of cues is mostly failing branches at positions where no cue can even start: a
lookahead for the set of characters a match can begin with fails those positions at once.

The set is read off `re`'s own parse of the pattern. Anything this module does not understand
(a case-insensitive flag, a branch that can match the empty string, a wildcard, a parser that
changed in a later Python) gives None, and the pattern is used as it is.
"""

from __future__ import annotations

import re
from typing import Any

try:
    # typeshed has no stubs for re's private modules
    from re import _constants as C  # type: ignore[attr-defined]
    from re import _parser as P  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a Python that moved them: no prefilter
    C = P = None

_SPAN_LIMIT = 5000  # a range wider than this is not worth a character class
DIGIT = r"\d"  # stands for the whole category (any Unicode decimal digit), kept as it is


def first_chars(pattern: str) -> frozenset[str] | None:
    """Every character a match of `pattern` can start with (DIGIT standing for all digits), or
    None when that is not known."""
    if P is None:
        return None
    try:
        parsed = P.parse(pattern)
        if parsed.state.flags & re.IGNORECASE:
            return None
        found = _first(list(parsed.data))
    except Exception:  # noqa: BLE001 - an unexpected parse tree: go without the prefilter
        return None
    return frozenset(found) if found else None


def with_prefilter(pattern: str) -> str:
    chars = first_chars(pattern)
    if chars is None:
        return pattern
    members = "".join(ch if ch == DIGIT else re.escape(ch) for ch in sorted(chars))
    return "(?=[" + members + "])(?:" + pattern + ")"


def _first(items: list[tuple[Any, Any]]) -> set[str] | None:
    """The first characters of the sequence `items`; None if unknown or if it can match empty."""
    for op, av in items:
        if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
            continue  # anchors and lookarounds consume nothing: the next item starts the match
        if op is C.LITERAL:
            return {chr(av)}
        if op is C.IN:
            return _charset(av)
        if op is C.SUBPATTERN:
            _group, add_flags, _del_flags, sub = av
            if add_flags & re.IGNORECASE:
                return None
            return _first(list(sub.data))
        if op is C.BRANCH:
            out: set[str] = set()
            for alternative in av[1]:
                chars = _first(list(alternative.data))
                if chars is None:
                    return None
                out |= chars
            return out
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
            low, _high, sub = av
            return _first(list(sub.data)) if low > 0 else None
        if hasattr(C, "ATOMIC_GROUP") and op is C.ATOMIC_GROUP:
            return _first(list(av.data))
        return None
    return None  # the empty sequence matches the empty string


def _charset(av: list[tuple[Any, Any]]) -> set[str] | None:
    out: set[str] = set()
    for op, value in av:
        if op is C.LITERAL:
            out.add(chr(value))
        elif op is C.RANGE:
            low, high = value
            if high - low > _SPAN_LIMIT:
                return None
            out.update(chr(c) for c in range(low, high + 1))
        elif op is C.CATEGORY and value is C.CATEGORY_DIGIT:
            out.add(DIGIT)
        else:
            return None  # NEGATE, other categories
    return out

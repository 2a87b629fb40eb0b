"""Complaint detection. Today only explicit signals count; the cue-based classifier is issue #5."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    is_complaint: bool
    severity: str = "none"  # none | normal | high
    score: float = 0.0
    reasons: tuple[str, ...] = ()


NOT_A_COMPLAINT = Verdict(False)


def classify(text: str, language: str | None) -> Verdict:
    return NOT_A_COMPLAINT


def explicit(source: str) -> Verdict:
    """The sender said so (a webhook "type": "complaint", a /complaint command)."""
    return Verdict(True, "normal", 1.0, (f"explicit: {source}",))

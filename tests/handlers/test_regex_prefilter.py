"""The prefilter must never change what a pattern finds, only how fast."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from bot.config import ComplaintsConfig
from handlers.complaints import load_classifier, normalize
from handlers.regex_prefilter import first_chars, with_prefilter

DATA = Path(__file__).resolve().parents[1] / "data" / "complaints_labelled.jsonl"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("abc|d", {"a", "d"}),
        ("(?P<x>退款)|(?P<y>投诉)", {"退", "投"}),
        (r"(?<![a-z])(?:late|lost)(?![a-z])", {"l"}),
        ("[两三]次|再次", {"两", "三", "再"}),
        ("(?:ab)+c", {"a"}),
    ],
)
def test_first_characters_of_a_pattern(pattern: str, expected: set[str]) -> None:
    assert first_chars(pattern) == expected


@pytest.mark.parametrize(
    "pattern",
    ["a?b", "x*", "(?i)abc", "(?i:a)b", ".b", "[^a]b", "a|", r"\w+", "(?!)"],
)
def test_unknown_or_possibly_empty_starts_give_no_prefilter(pattern: str) -> None:
    assert first_chars(pattern) is None
    assert with_prefilter(pattern) == pattern


def test_digits_stay_a_category_so_every_unicode_digit_passes() -> None:
    assert first_chars(r"\d+次|第") == {r"\d", "第"}
    prefiltered = re.compile(with_prefilter(r"\d+次|第"))
    assert [m.group() for m in prefiltered.finditer("3次 ٣次 ३次 第")] == [
        "3次",
        "٣次",
        "३次",
        "第",
    ]


def test_the_complaint_scanners_find_exactly_the_same_matches_with_and_without_it() -> None:
    lexicon = load_classifier(ComplaintsConfig()).lexicon
    texts = [
        normalize(json.loads(line)["text"]) for line in DATA.read_text("utf-8").splitlines() if line
    ]
    rng = random.Random(7)
    alphabet = "退款投诉差评快递两三次再又没收到了等天周 abcdefghijklmnoprstuvwy0123456789٣,.!?"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(3000)]
    checked = 0
    for pattern, _names in lexicon._scanners.values():
        plain = re.compile(pattern.pattern.partition("])(?:")[2][:-1])
        assert pattern.pattern.startswith("(?=["), "the built-in lexicon should get a prefilter"
        for text in texts:
            found = [(m.span(), m.lastgroup) for m in pattern.finditer(text)]
            assert found == [(m.span(), m.lastgroup) for m in plain.finditer(text)], text
            checked += bool(found)
    assert checked > 1000  # the texts do hit cues: the comparison is not of empty lists
